"""What the engine's work costs on a given run: seconds of each unit of work, timed on the run's
own model, data and schedule by the very functions the engine runs, for a few steps. A job's time
is then about its count of each unit (the app's time estimates, app.services.timing).

    step       one recorded training step with its bookkeeping (Algorithm 1)
    retrace    one retraced step: the replay of θ[t] plus the Hessian-vector pass (Algorithm 2)
    vector     one vectorised counterfactual step (Definition 2), fixed part …
    mask       … and its cost per removal mask (it grows about linearly in the masks)
    eval       one evaluation of the validation images
    gradients  one pass of per-image gradient products
    parallel   how much slower a unit runs while the other workers run theirs (≥ 1): the
               shares of counterfactual SGD and the replay ahead of the retrace run at once
"""
from __future__ import annotations

import statistics
import threading
import time

import torch
from torch.func import vmap

from . import baselines
from .config import workers
from .runs import Run
from .sgd import batch_stats, batch_weights, initial_params, sgd_step
from .sgd_influence import hvp_and_dot_grads


def synchronizer(device: torch.device):
    """What waits for the device's queued work to finish (nothing to wait for on a CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed(fn, device: torch.device, budget: float = 0.4, most: int = 12) -> float:
    """Median seconds of fn() over repeated calls (after one warm-up), within a time budget."""
    sync = synchronizer(device)
    fn()
    sync()
    times, begun = [], time.perf_counter()
    while len(times) < most and (len(times) < 3 or time.perf_counter() - begun < budget):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CHUNK_SIZES = {"cpu": (8, 4, 1),  # vmap over 8 masks at a time, 4, one after the other: on a
               # CPU the shares of the workers (sgd.shares) are cut at these chunks
               "cuda": (None, 4, 1)}  # a GPU: every mask at once too
_FASTEST: dict[tuple, int | None] = {}  # the model, image and batch sizes → the fastest chunk


def vmap_chunk(run: Run, masks: int = 8) -> int | None:
    """The vmap chunk size (CHUNK_SIZES) with which counterfactual SGD runs fastest for this
    run's model, images and batch size: timed once per process on `masks` masks of its own
    first batches. On a CPU vmap turns M convolutions into one grouped convolution, which was
    measured up to 2× slower per mask than M plain ones for the MNIST CNN and faster for the
    small CNN (benchmarks/results/profile.md); the results are the same either way."""
    key = (run.preset.name, run.data.shape, run.schedule.batch_size, run.dtype, run.device.type,
           torch.get_num_threads())
    if key not in _FASTEST:
        obj, keep = run.objective, run.keep_at(0)
        theta = initial_params(run.model, run.device, run.dtype)
        thetas = {k: v.expand(masks, *v.shape).clone() for k, v in theta.items()}
        keeps = keep.expand(masks, -1)
        idx = torch.as_tensor(run.schedule.batch(0), device=run.device)

        def step(chunk):
            one = vmap(lambda th, kp: sgd_step(obj, th, idx, 0.01, kp)[0], chunk_size=chunk)
            return lambda: one(thetas, keeps)

        seconds = {chunk: timed(step(chunk), run.device, budget=0.2, most=3)
                   for chunk in CHUNK_SIZES.get(run.device.type, CHUNK_SIZES["cuda"])}
        _FASTEST[key] = min(seconds, key=seconds.get)
    return _FASTEST[key]


def slowdown(fn, workers: int, device: torch.device, rounds: int = 3) -> float:
    """fn's seconds while `workers` threads call it at once, over its seconds alone (≥ 1): in each
    of `rounds` rounds, a few calls timed alone, then the same calls in every thread from a
    common start until the last is done (the caller's torch threads in each); the median over
    the rounds, so that a moment of load on a shared machine does not decide it."""
    if workers < 2:
        return 1.0
    sync = synchronizer(device)
    calls = max(2, min(20, round(0.08 / max(timed(fn, device, budget=0.1, most=3), 1e-6))))
    threads = torch.get_num_threads()

    def some_calls() -> None:
        for _ in range(calls):
            fn()
        sync()

    ratios = []
    for _ in range(rounds):
        begun = time.perf_counter()
        some_calls()
        alone = time.perf_counter() - begun
        start = threading.Barrier(workers + 1)

        def one() -> None:
            torch.set_num_threads(threads)
            start.wait()
            some_calls()

        pool = [threading.Thread(target=one) for _ in range(workers)]
        for thread in pool:
            thread.start()
        start.wait()
        begun = time.perf_counter()
        for thread in pool:
            thread.join()
        ratios.append((time.perf_counter() - begun) / alone)
    return max(1.0, statistics.median(ratios))


def unit_costs(run: Run) -> dict:
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
        step = vmap(lambda th, kp, idx: sgd_step(obj, th, idx, 0.01, kp)[0], in_dims=(0, 0, None),
                    chunk_size=chunk)
        return lambda: step(thetas, keeps, batch())

    chunk = vmap_chunk(run)
    one, eight = (timed(vector_step(m), device) for m in (1, 8))
    parallel = slowdown(vector_step(chunk or 8), workers(device), device)  # a share's step
    return {"step": timed(train_step, device), "retrace": timed(retrace_step, device),
            "mask": max((eight - one) / 7, 1e-6), "vector": max(one - (eight - one) / 7, 0.0),
            "eval": timed(lambda: run.evaluate("val", theta), device),
            "gradients": timed(lambda: baselines.dot_grads(obj, theta, theta), device),
            "parallel": parallel}
