"""What to expect before starting: the time and disk each job should take with given settings.

Every estimate is built from the engine's unit costs (influence.costs: one training step, one
retraced step, one vectorised counterfactual step and its cost per removal mask, one
evaluation, one pass of per-image gradients), timed on the real model and data for a few steps
of the run's own schedule at the moment of the estimate, so the machine's load then is in them;
the steps the replay recomputes between its kept θ (none when every θ of an epoch fits in the
memory budget) count as training steps. Work that the engine shares among the CPU cores (the
masks of counterfactual SGD, the replay ahead of the retrace) counts once per core, a little
slower (the parallel unit). A job's time is then its count of each unit;
benchmarks/estimates.py measures how close that comes.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from datasets import ImageSet
from influence import baselines, labels, methods, probe, runs, trust
from influence.costs import unit_costs, vmap_chunk
from influence.config import RunConfig, workers
from influence.sgd import replayed_steps, shares

CHUNK = 32  # removal masks per vectorised run (counterfactual.outcomes)
LONG = 300  # seconds: a job estimated to take longer is announced with a warning


def long_warning(seconds: float, faster: str) -> str | None:
    """A sentence to show before starting a job estimated over LONG seconds, naming the faster
    option; None for a shorter one."""
    if seconds <= LONG:
        return None
    return (f"This will take about {seconds / 60:.0f} minutes on this machine. Faster: "
            f"{faster}.")


def at_once(seconds: list[float], parallel: float) -> float:
    """Work of these seconds each (timed alone), one piece per thread, run at the same time: the
    longest, plus (parallel − 1) times the second longest (while two run, each runs `parallel`
    times slower: costs' parallel, timed with every worker busy)."""
    longest = sorted(seconds, reverse=True) + [0.0, 0.0]
    return longest[0] + (parallel - 1) * longest[1]


def vectorised(guess: dict, masks: int, steps: int) -> float:
    """A counterfactual run of `steps` steps for `masks` removal sets, CHUNK at a time, each
    chunk's masks shared among the workers (influence.sgd.shares), which run at once a little
    slower each (costs' parallel)."""
    costs = guess["costs"]
    chunks = math.ceil(masks / CHUNK) if masks else 0
    parts = shares(min(masks, CHUNK), guess["workers"], guess["vmap_chunk"]) if masks else []
    per_chunk = at_once([costs["vector"] + costs["mask"] * (part.stop - part.start)
                         for part in parts], costs["parallel"])
    return chunks * steps * per_chunk


def estimate(data: ImageSet, config: RunConfig) -> dict:
    """Seconds for every job kind with these settings (and the app's defaults for their own
    options), and the disk a run takes."""
    run = runs.Run(replace(config, removed={}), data)
    costs = unit_costs(run)
    steps, epochs = run.schedule.steps, run.schedule.epochs
    last = run.schedule.steps_per_epoch
    again = replayed_steps(last, run.replay_every()) - (last - 1)  # steps replayed twice
    sharing = {"costs": costs, "workers": workers(run.device), "vmap_chunk": vmap_chunk(run)}
    n_train, n_params = len(run.split.train), sum(p.numel() for p in run.model.parameters())
    finish = 3 * costs["eval"] * (len(data) / max(len(run.split.val), 1))  # every part, saved
    train = steps * costs["step"] + epochs * costs["eval"] + finish
    probe_time = vectorised(sharing, len(probe.FACTORS), probe.probe_steps(run))
    ends = min(2 * methods.REFINE, n_train)  # one Hessian-vector product (≈ 3 steps) each
    refine_time = steps * (costs["step"] + 3 * costs["mask"] * ends)
    if run.replay_ahead():  # the replay runs beside the retrace: only the first epoch's waits
        score = ((steps - last) * at_once([costs["retrace"] - costs["step"], costs["step"]],
                                          costs["parallel"])
                 + last * costs["retrace"] + costs["eval"])
    else:
        score = steps * costs["retrace"] + epochs * again * costs["step"] + costs["eval"]
    per_image = costs["gradients"] / n_train  # one per-image gradient product
    bytes_per = torch.finfo(run.dtype).bits // 8
    disk = ((epochs + 2) * n_params * bytes_per + run.schedule.order.size * 4 + steps * 8
            + steps * 60 + len(data) * 100)
    return {
        "preset": run.preset.name, "reason": run.preset_reason, "lr": run.config.lr,
        "epochs": epochs, "n_train": n_train, "n_val": len(run.split.val),
        "n_test": len(run.split.test), "steps": steps, "n_params": n_params,
        **sharing,
        "seconds_train": train, "seconds_probe": probe_time,
        "seconds_score": score,
        "seconds_score_last": last * costs["retrace"] + again * costs["step"] + costs["eval"],
        "seconds_score_refined": score + refine_time,
        "seconds_retrain": train, "seconds_retrain_last": last * costs["step"] + costs["eval"]
        + finish,
        "seconds_kl": (baselines.KL_ITERATIONS * min(n_train, baselines.KL_HESSIAN_SAMPLES)
                       * per_image * 3 + costs["gradients"]),
        "seconds_tracin": epochs * (costs["gradients"] + costs["eval"]),
        "seconds_label_check": vectorised(sharing, labels.FOLDS, steps) + costs["gradients"],
        "disk_bytes": int(disk)}


def retrained_steps(guess: dict, mode: str) -> int:
    """The SGD steps a retraining in `mode` runs: every epoch's (all) or the last one's."""
    return guess["steps"] if mode == "all" else guess["steps"] // guess["epochs"]


def retrain_seconds(guess: dict, mode: str) -> float:
    """The recorded retraining of a cleaning round in `mode`, alone."""
    return guess["seconds_retrain" if mode == "all" else "seconds_retrain_last"]


def controls_seconds(guess: dict, controls: int, mode: str) -> float:
    """The random controls of a cleaning round: `controls` masks in `mode`."""
    return (vectorised(guess, controls, retrained_steps(guess, mode))
            + controls * guess["costs"]["eval"])


def round_seconds(guess: dict, controls: int, mode: str) -> float:
    """A cleaning round: the cleaned run retrained in `mode` and its `controls` random controls,
    which retrain at the same time where the workers allow (influence.sgd.in_parallel: the
    cleaned run on a core of its own when the controls' shares leave one free, else before the
    last share), a little slower each (costs' parallel)."""
    retrain = retrain_seconds(guess, mode)
    if not controls or guess["workers"] == 1:
        return retrain + controls_seconds(guess, controls, mode)
    costs = guess["costs"]
    steps = retrained_steps(guess, mode)
    first = min(controls, CHUNK)  # the first chunk of masks runs beside the cleaned run
    parts = [part.stop - part.start for part in shares(first, guess["workers"],
                                                        guess["vmap_chunk"])]
    share = [steps * (costs["vector"] + costs["mask"] * n) for n in parts]
    threads = [retrain, *share] if len(parts) < guess["workers"] \
        else [*share[:-1], retrain + share[-1]]
    return (at_once(threads, costs["parallel"]) + vectorised(guess, controls - first, steps)
            + controls * costs["eval"])


def check_seconds(guess: dict, singles: int, groups: int, mode: str) -> float:
    """The trust check with `singles` images, `groups` groups and the ranking's top sets
    (trust.top_sizes), retraining in `mode`."""
    tops = len(trust.top_sizes(guess["n_train"]))
    return controls_seconds(guess, 1 + singles + groups + tops, mode)
