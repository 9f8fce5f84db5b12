"""What to expect before starting: the time and disk each job should take with given settings.

Every estimate is built from unit costs timed on the real model and data, by the very code the
jobs run, for a few steps of the run's own schedule: one recorded training step with its
bookkeeping, one retraced step (replay plus the Hessian-vector pass; the steps the replay
recomputes between its kept θ count as training steps), one vectorised counterfactual step for
1 and for 8 removal masks (its cost grows about linearly in the masks),
one evaluation of the validation images, and one pass of per-image gradients. A job's time is
then its count of each unit; benchmarks/estimates.py measures how close that comes.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import torch
from torch.func import vmap

from datasets import ImageSet
from influence import baselines, cleaning, labels, methods, probe, runs
from influence.config import RunConfig
from influence.sgd import batch_stats, batch_weights, initial_params, replayed_steps, sgd_step
from influence.sgd_influence import hvp_and_dot_grads

CHUNK = 32  # removal masks per vectorised run (counterfactual.outcomes)
CHECK_SINGLES, CHECK_GROUPS = 10, 20  # the trust check's defaults (app.services.jobs)


def timed(fn, device: torch.device, budget: float = 0.4, most: int = 12) -> float:
    """Median seconds of fn() over repeated calls (after one warm-up), within a time budget."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times, begun = [], time.perf_counter()
    while len(times) < most and (len(times) < 3 or time.perf_counter() - begun < budget):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unit_costs(run: runs.Run) -> dict:
    """Seconds of each unit of work, timed on this run's model, data and schedule."""
    obj, schedule, device = run.objective, run.schedule, run.device
    theta = initial_params(run.model, device, run.dtype)
    keep = run.keep_at(0)
    batches = [torch.as_tensor(schedule.batch(t), device=device)
               for t in range(min(schedule.steps, 8))]
    turn = iter(range(10 ** 9))

    def batch():  # a different batch each call, as training sees them
        return batches[next(turn) % len(batches)]

    def train_step():
        idx = batch()
        _, (ell, out) = sgd_step(obj, theta, idx, float(schedule.lr[0]), keep)
        batch_stats(obj, idx, keep, ell, out)

    def retrace_step():
        idx = batch()
        sgd_step(obj, theta, idx, float(schedule.lr[0]), keep)  # the replay of θ[t]
        hvp_and_dot_grads(obj, theta, idx, batch_weights(keep, idx, run.dtype), theta)

    def vector_step(m: int):
        thetas = {k: v.expand(m, *v.shape).clone() for k, v in theta.items()}
        keeps = keep.expand(m, -1)
        step = vmap(lambda th, kp, idx: sgd_step(obj, th, idx, 0.01, kp)[0], in_dims=(0, 0, None))
        return lambda: step(thetas, keeps, batch())

    one, eight = (timed(vector_step(m), device) for m in (1, 8))
    return {"step": timed(train_step, device), "retrace": timed(retrace_step, device),
            "mask": max((eight - one) / 7, 1e-6), "vector": max(one - (eight - one) / 7, 0.0),
            "eval": timed(lambda: run.evaluate("val", theta), device),
            "gradients": timed(lambda: baselines.dot_grads(obj, theta, theta), device)}


def vectorised(costs: dict, masks: int, steps: int) -> float:
    """A counterfactual run of `steps` steps for `masks` removal sets, CHUNK at a time."""
    chunks = math.ceil(masks / CHUNK) if masks else 0
    per_chunk = costs["vector"] + costs["mask"] * min(masks, CHUNK)
    return chunks * steps * per_chunk


def estimate(data: ImageSet, config: RunConfig) -> dict:
    """Seconds for every job kind with these settings (and the app's defaults for their own
    options), and the disk a run takes."""
    run = runs.Run(replace(config, removed={}), data)
    costs = unit_costs(run)
    steps, epochs = run.schedule.steps, run.schedule.epochs
    last = run.schedule.steps_per_epoch
    again = replayed_steps(last) - (last - 1)  # steps of an epoch replayed a second time
    n_train, n_params = len(run.split.train), sum(p.numel() for p in run.model.parameters())
    finish = 3 * costs["eval"] * (len(data) / max(len(run.split.val), 1))  # every part, saved
    train = steps * costs["step"] + epochs * costs["eval"] + finish
    probe_time = vectorised(costs, len(probe.FACTORS), probe.probe_steps(run))
    check_masks = 1 + CHECK_SINGLES + CHECK_GROUPS
    ends = min(2 * methods.REFINE, n_train)  # one Hessian-vector product (≈ 3 steps) each
    refine_time = steps * (costs["step"] + 3 * costs["mask"] * ends)
    score = steps * costs["retrace"] + epochs * again * costs["step"] + costs["eval"]
    per_image = costs["gradients"] / n_train  # one per-image gradient product
    bytes_per = torch.finfo(run.dtype).bits // 8
    disk = ((epochs + 2) * n_params * bytes_per + run.schedule.order.size * 4 + steps * 8
            + steps * 60 + len(data) * 100)
    return {
        "preset": run.preset.name, "reason": run.preset_reason, "lr": run.config.lr,
        "epochs": epochs, "n_train": n_train, "n_val": len(run.split.val),
        "n_test": len(run.split.test), "steps": steps, "n_params": n_params,
        "costs": costs,
        "seconds_train": train, "seconds_probe": probe_time,
        "seconds_score": score,
        "seconds_score_last": last * costs["retrace"] + again * costs["step"] + costs["eval"],
        "seconds_score_refined": score + refine_time,
        "seconds_retrain": train, "seconds_retrain_last": last * costs["step"] + costs["eval"]
        + finish,
        "seconds_kl": (baselines.KL_ITERATIONS * min(n_train, baselines.KL_HESSIAN_SAMPLES)
                       * per_image * 3 + costs["gradients"]),
        "seconds_tracin": epochs * (costs["gradients"] + costs["eval"]),
        "seconds_label_check": vectorised(costs, labels.FOLDS, steps) + costs["gradients"],
        "seconds_check": vectorised(costs, check_masks, steps) + check_masks * costs["eval"],
        "seconds_check_last": vectorised(costs, check_masks, last) + check_masks * costs["eval"],
        "seconds_controls": vectorised(costs, cleaning.CONTROLS, steps),
        "seconds_controls_last": vectorised(costs, cleaning.CONTROLS, last),
        "disk_bytes": int(disk)}


def controls_seconds(guess: dict, controls: int, mode: str) -> float:
    """The random controls of a cleaning round: `controls` masks in `mode`."""
    steps = guess["steps"] if mode == "all" else guess["steps"] // guess["epochs"]
    return vectorised(guess["costs"], controls, steps) + controls * guess["costs"]["eval"]


def check_seconds(guess: dict, singles: int, groups: int, mode: str) -> float:
    """The trust check with `singles` images and `groups` groups, retraining in `mode`."""
    return controls_seconds(guess, 1 + singles + groups, mode)
