"""The retrace over many epochs: how u_t grows backwards, where the scores come from, and the
variants that keep it bounded (damping, a horizon of the last E epochs, Gauss-Newton curvature).

Algorithm 2 carries u backwards, u[t−1] = (I − η_t H[t]) u[t]. On a non-convex loss H[t] has
negative eigenvalues, and along those (I − η_t H[t]) is larger than 1: u grows at every step it
points that way, and the scores of early epochs, ⟨u[t], η_t/|S_t| g(z_j; θ[t])⟩, are summed
with a u that the chain of steps has inflated. A step also grows u where η_t times a positive
eigenvalue exceeds 2 (overshoot). ‖(I − ηH)u‖² = ‖u‖² − 2η⟨u, Hu⟩ + η²‖Hu‖²: the middle term
grows u exactly when the Rayleigh quotient ⟨u, Hu⟩/‖u‖² is negative, the last one always.

Variants (sgd_influence.retrace's options):
* damping λ: u ← (1 − λη_t)(I − η_t H[t]) u. This is exact for a counterfactual whose
  displacement from the recorded run decays by (1 − λη_t) after every step,
      θ_{−j}[t+1] − θ[t+1] = (1 − λη_t) (step_{−j}(θ_{−j}[t]) − step(θ[t])),
  i.e. weight decay of the counterfactual towards the recorded trajectory (the proximal term of
  Bae et al., 2022). Linearised, δ[t+1] = (1 − λη_t)((I − η_t H[t]) δ[t] + η_t/|S_t| g_j), so
  ⟨u, δ[T]⟩ sums (1 − λη_t) η_t/|S_t| ⟨u[t+1], g_j⟩ with u[t] = (1 − λη_t)(I − η_t H[t])ᵀ u[t+1]:
  the retrace scales u by (1 − λη_t) before each step. For a quadratic loss trained one epoch it
  is exact, as Algorithm 2 is for λ = 0 (tests/test_horizon.py).
* horizon E: retrace the last E epochs only (epochs = range(K − E, K)); E = 1 is the paper's
  approximate version, E = K the exact one. The scores of a horizon E are the sum of the last E
  per-epoch contributions of the full retrace (retrace_by_epoch), since u evolves the same.
* curvature "gauss-newton": G[t] in place of H[t] (sgd_influence.gauss_newton_pass), positive
  semi-definite: no growth along negative curvature, only overshoot.

retrace_by_epoch runs the same steps as sgd_influence.retrace and also records, per epoch, the
scores it adds and, per step, the size of u and its growth.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from .sgd import Objective, Params, Schedule
from .sgd_influence import CURVATURE_PASSES, retraced_steps


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[name] * b[name]).sum() for name in a)


def retrace_by_epoch(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                     keep_at: Callable[[int], torch.Tensor], u: Params, epochs: range,
                     damping: float = 0.0, curvature: str = "hessian",
                     labels_at: Callable[[int], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, pd.DataFrame]:
    """sgd_influence.retrace's steps, with the scores each epoch adds kept apart: returns the
    len(epochs) × N contributions (row i: epoch epochs[i]; their sum is retrace's result) and
    one row per retraced step (backwards): t, epoch, eta, norm (‖u‖ before the step), rayleigh
    (⟨u, Hu⟩/‖u‖², the curvature along u), curvature_term (−2η⟨u, Hu⟩/‖u‖²: the growth of
    ‖u‖² from curvature along u, positive only where it is negative), overshoot_term
    (η²‖Hu‖²/‖u‖²) and growth (‖u‖ after the step / before, damping included)."""
    step_pass = CURVATURE_PASSES[curvature]
    n = obj.x.shape[0]
    contrib = torch.zeros(len(epochs), n, dtype=obj.x.dtype, device=obj.x.device)
    rows = []
    for t, theta, idx, eta, w, labels in retraced_steps(obj, schedule, checkpoints, keep_at,
                                                        epochs, labels_at=labels_at):
        k = t // schedule.steps_per_epoch
        if damping:
            u = {name: (1 - damping * eta) * v for name, v in u.items()}
        hu, u_dot_g, _, _ = step_pass(obj, theta, idx, w, u, labels)
        contrib[k - epochs.start].index_add_(0, idx, eta * w * u_dot_g)
        norm2, uhu, hu2 = float(dot(u, u)), float(dot(u, hu)), float(dot(hu, hu))
        before = norm2 / (1 - damping * eta) ** 2 if damping else norm2
        u = {name: u[name] - eta * hu[name] for name in u}
        rows.append({"t": t, "epoch": k, "eta": eta, "norm": before ** 0.5,
                     "rayleigh": uhu / norm2, "curvature_term": -2 * eta * uhu / norm2,
                     "overshoot_term": eta ** 2 * hu2 / norm2,
                     "growth": (float(dot(u, u)) / before) ** 0.5})
    return contrib, pd.DataFrame(rows)


def horizons(contrib: torch.Tensor) -> dict[int, torch.Tensor]:
    """The scores of a retrace of the last E epochs for every E, from retrace_by_epoch's
    contributions of a full retrace: the sum of the last E rows."""
    tail = contrib.flip(0).cumsum(0)
    return {e + 1: tail[e] for e in range(len(contrib))}


def growth_summary(steps: pd.DataFrame) -> dict:
    """How much u grew along the retrace and from what: total growth (‖u‖ at the end of the
    retrace over ‖u‖ at its start, the query), rebound (‖u‖ at the end over its smallest
    value along the retrace), the share of the steps with negative curvature along u, and the
    share of the log-growth of the growing steps that comes from steps with negative curvature
    along u, and the share that comes from the first quarter of the training steps."""
    growing = steps[steps.growth > 1]
    log_growth = np.log(growing.growth.to_numpy())
    negative = (growing.rayleigh < 0).to_numpy()
    total = float(steps.growth.prod())
    end = steps.norm.iloc[-1] * steps.growth.iloc[-1]  # ‖u‖ after the last retraced step
    return {"growth": total, "rebound": float(end / min(steps.norm.min(), end)),
            "negative_steps": float((steps.rayleigh < 0).mean()),
            "growth_share_negative": float(log_growth[negative].sum() / log_growth.sum())
            if len(growing) else 0.0,
            "growth_share_first_quarter": float(
                log_growth[(growing.t <= steps.t.max() / 4).to_numpy()].sum() / log_growth.sum())
            if len(growing) else 0.0}


def epoch_shares(contrib: torch.Tensor) -> torch.Tensor:
    """The share of each epoch in the scores: Σ_j |contribution| per epoch over the total."""
    size = contrib.abs().sum(1)
    return size / size.sum()
