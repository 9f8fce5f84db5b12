"""A learning rate that trains: a short probe before the recorded run.

The probe trains copies of the model from the run's own initialisation on the first steps of its
own batch order, one copy per candidate rate, all at once (torch.func.vmap over the rates,
shared among the CPU cores: influence.sgd.in_parallel). A rate is steady if it did not diverge
and lowered the training loss at least half as much as the best rate did. The probe keeps the
candidate one step (a factor 3) below the largest steady rate: the fastest rate of a short run
is too fast for the whole, much longer run (the usual reading of a learning-rate range test),
and a near tie between rates, common when nothing has been learned yet, must not decide. It
touches neither the recorded run nor the validation or test images.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.func import vmap

import os
from dataclasses import replace

from datasets import ImageSet

from .progress import ProgressFn, counted
from .config import RunConfig, workers
from .costs import vmap_chunk
from .run_folder import refuse_existing, train_new
from .runs import Run
from .sgd import in_parallel, initial_params, sgd_step, shares

FACTORS = (1 / 3, 1.0, 3.0, 10.0)  # candidate rates, times the preset's own
MAX_STEPS = 200  # probe steps at most (and an eighth of the run's steps, at least 50)


def probe_steps(run: Run) -> int:
    return min(MAX_STEPS, max(50, run.schedule.steps // 8), run.schedule.steps)


def choose_lr(run: Run, factors=FACTORS, on_progress: ProgressFn | None = None) -> dict:
    """Try each rate (the preset's own times `factors`, ascending) for the first
    probe_steps(run) steps of the run's schedule; returns the chosen rate (one candidate below
    the largest steady one) with every rate's final training loss (the mean over the last fifth
    of the probe; inf where it diverged) and the reason in words."""
    base = run.preset.lr
    rates = torch.tensor([base * f for f in factors], dtype=run.dtype, device=run.device)
    steps = probe_steps(run)
    obj, schedule, keep = run.objective, run.schedule, run.keep_at(0)
    theta0 = initial_params(run.model, run.device, run.dtype)
    chunk = vmap_chunk(run)
    step = vmap(lambda th, lr, idx: sgd_step(obj, th, idx, lr, keep), in_dims=(0, 0, None),
                chunk_size=chunk)
    decay = schedule.lr / run.config.lr  # 1, or 1/√t for a decaying rate

    def probe_rates(rows: slice, on_step) -> dict[str, torch.Tensor]:
        """The training loss of each rate of `rows` after every probe step (rates × steps)."""
        share = rates[rows]
        thetas = {k: v.expand(len(share), *v.shape).clone() for k, v in theta0.items()}
        losses = torch.zeros(len(share), steps, dtype=torch.float64)
        for t in range(steps):
            idx = torch.as_tensor(schedule.batch(t), device=run.device)
            thetas, (ell, _) = step(thetas, share * float(decay[t]), idx)
            losses[:, t] = ell.mean(1).detach().cpu().double()
            on_step(t)
        return {"losses": losses}

    losses = in_parallel(probe_rates, shares(len(rates), workers(run.device), chunk),
                         counted(on_progress, "probe", steps)
                         )["losses"].T.numpy()  # steps × rates, the rates at once
    tail = losses[-max(1, steps // 5):]
    blown = ~np.isfinite(losses).all(0) | (losses.max(0) > 100 * max(losses[0].max(), 1.0))
    final = np.where(blown, np.inf, tail.mean(0))
    start = losses[0].mean()  # the first step: the same θ and batch for every rate
    gain = start - final  # -inf where diverged
    steady = np.flatnonzero(gain >= 0.5 * max(gain.max(), 0.0))
    largest = int(steady.max()) if len(steady) and np.isfinite(gain).any() else 0
    pick = max(largest - 1, 0)
    chosen = float(rates[pick])
    reason = (f"a {steps}-step probe of {len(rates)} rates from the same start (training loss "
              f"{start:.3g} at first): {float(rates[largest]):g} is the largest steady rate "
              f"(to {final[largest]:.3g}); one step below it, {chosen:g}, is kept for the whole, "
              "longer run" if pick < largest else
              f"a {steps}-step probe of {len(rates)} rates from the same start: only the "
              f"smallest, {chosen:g}, was steady (training loss {start:.3g} → "
              f"{final[pick]:.3g})")
    if blown.any():
        reason += f"; {', '.join(f'{float(r):g}' for r, b in zip(rates, blown) if b)} diverged"
    return {"lr": chosen, "rates": [float(r) for r in rates],
            "losses": [float(x) for x in final], "steps": steps, "reason": reason}


def train_with_probe(config: RunConfig, out: str | os.PathLike, data: ImageSet | None = None,
                     on_progress: ProgressFn | None = None) -> Run:
    """Choose the learning rate by the probe, then train and save the recorded run with it
    (run_folder.train_new); the probe's figures are kept in its metrics under "lr_probe"."""
    refuse_existing(out)
    planned = Run(config, data)
    found = choose_lr(planned, on_progress=on_progress)
    return train_new(replace(planned.config, lr=found["lr"]), out, planned.data, on_progress,
                     notes={"lr_probe": found})
