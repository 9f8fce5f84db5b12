"""A learning rate that trains: a short probe before the recorded run.

The probe trains copies of the model from the run's own initialisation on the first steps of its
own batch order, one copy per candidate rate, all at once (torch.func.vmap over the rates), and
keeps the rate whose training loss ends lowest without diverging. It touches neither the recorded
run nor the validation or test images.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.func import vmap

import os
from dataclasses import replace

from datasets import ImageSet

from .progress import Progress, ProgressFn
from .runs import Run, RunConfig, refuse_existing, train_new
from .sgd import initial_params, sgd_step

FACTORS = (1 / 3, 1.0, 3.0, 10.0)  # candidate rates, times the preset's own
MAX_STEPS = 200  # probe steps at most (and a quarter of the run's steps, at least 50)
PREFER_SMALLER = 0.05  # a smaller rate whose loss is within 5 % of the best is kept: steadier


def probe_steps(run: Run) -> int:
    return min(MAX_STEPS, max(50, run.schedule.steps // 4), run.schedule.steps)


def choose_lr(run: Run, factors=FACTORS, on_progress: ProgressFn | None = None) -> dict:
    """Try each rate (the preset's own times `factors`) for the first probe_steps(run) steps of
    the run's schedule; returns the chosen rate with every rate's final training loss (the mean
    over the last fifth of the probe; inf where it diverged) and the reason in words."""
    base = run.preset.lr
    rates = torch.tensor([base * f for f in factors], dtype=run.dtype, device=run.device)
    steps = probe_steps(run)
    obj, schedule, keep = run.objective, run.schedule, run.keep_at(0)
    theta0 = initial_params(run.model, run.device, run.dtype)
    thetas = {k: v.expand(len(rates), *v.shape).clone() for k, v in theta0.items()}
    step = vmap(lambda th, lr, idx: sgd_step(obj, th, idx, lr, keep), in_dims=(0, 0, None))
    losses = np.zeros((steps, len(rates)))
    decay = schedule.lr / run.config.lr  # 1, or 1/√t for a decaying rate
    for t in range(steps):
        idx = torch.as_tensor(schedule.batch(t), device=run.device)
        thetas, (ell, _) = step(thetas, rates * float(decay[t]), idx)
        losses[t] = ell.mean(1).detach().cpu().double().numpy()
        if on_progress:
            on_progress(Progress("probe", t + 1, steps))
    tail = losses[-max(1, steps // 5):]
    blown = ~np.isfinite(losses).all(0) | (losses.max(0) > 100 * max(losses[0].max(), 1.0))
    final = np.where(blown, np.inf, tail.mean(0))
    best = int(np.argmin(final))
    if not np.isfinite(final[best]):
        best = 0  # every rate diverged: take the smallest, training will say so
    for i in range(best):  # the smallest rate that is nearly as good
        if final[i] <= final[best] * (1 + PREFER_SMALLER):
            best = i
            break
    chosen = float(rates[best])
    reason = (f"a {steps}-step probe of {len(rates)} rates from the same start: {chosen:g} "
              f"brought the training loss lowest ({final[best]:.3g}"
              + (f"; {', '.join(f'{float(r):g}' for r, b in zip(rates, blown) if b)} diverged"
                 if blown.any() else "") + ")")
    return {"lr": chosen, "rates": [float(r) for r in rates],
            "losses": [float(x) for x in final], "steps": steps, "reason": reason}


def train_with_probe(config: RunConfig, out: str | os.PathLike, data: ImageSet | None = None,
                     on_progress: ProgressFn | None = None) -> Run:
    """Choose the learning rate by the probe, then train and save the recorded run with it
    (runs.train_new); the probe's figures are kept in its metrics under "lr_probe"."""
    refuse_existing(out)
    planned = Run(config, data)
    found = choose_lr(planned, on_progress=on_progress)
    return train_new(replace(planned.config, lr=found["lr"]), out, planned.data, on_progress,
                     notes={"lr_probe": found})
