"""What to expect before starting: the time and disk a run with given settings should take,
from a few timed steps of the real model."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from datasets import ImageSet
from influence import baselines, runs
from influence.runs import RunConfig
from influence.sgd import batch_weights, initial_params, sgd_step
from influence.sgd_influence import hvp_and_dot_grads


def estimate(data: ImageSet, config: RunConfig, repeats: int = 3) -> dict:
    """Time and disk a run with these settings should take, from a few timed steps of the real
    model: training, scoring (all epochs / last epoch) and one retraining."""
    run = runs.Run(replace(config, removed={}), data)
    theta = initial_params(run.model, run.device, run.dtype)
    keep = run.keep_at(0)
    idx = torch.as_tensor(run.schedule.batch(0), device=run.device)
    lr = float(run.schedule.lr[0])

    def timed(fn) -> float:
        fn()  # warm up
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
        sync()
        begun = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - begun) / repeats

    step = timed(lambda: sgd_step(run.objective, theta, idx, lr, keep))
    w = batch_weights(keep, idx, run.dtype)
    retrace_step = step + timed(lambda: hvp_and_dot_grads(run.objective, theta, idx, w, theta))
    steps, epochs = run.schedule.steps, run.schedule.epochs
    evaluation = timed(lambda: run.evaluate("val", theta)) * epochs
    n_params = sum(p.numel() for p in theta.values())
    bytes_per = torch.finfo(run.dtype).bits // 8
    disk = ((epochs + 2) * n_params * bytes_per + run.schedule.order.size * 4 + steps * 8
            + steps * 60 + len(data) * 40)
    train = steps * step + evaluation
    per_instance = retrace_step / run.config.batch_size  # one HVP and ⟨u, g_i⟩, per instance
    n_train = len(run.split.train)
    return {"preset": run.preset.name, "reason": run.preset_reason, "lr": run.config.lr,
            "n_train": n_train, "n_val": len(run.split.val),
            "n_test": len(run.split.test), "steps": steps, "n_params": n_params,
            "seconds_train": train, "seconds_score": steps * retrace_step,
            "seconds_score_last": steps / epochs * retrace_step, "seconds_retrain": train,
            "seconds_kl": baselines.KL_ITERATIONS * min(n_train, baselines.KL_HESSIAN_SAMPLES)
            * per_instance + n_train * per_instance,
            "seconds_tracin": epochs * n_train * step / run.config.batch_size,  # one jvp each
            "disk_bytes": int(disk)}
