"""Algorithm 2 (inference phase): SGD-influence of every training instance on a query.

L̂_{−j}(u) ≈ ⟨u, θ_{−j}[T] − θ[T]⟩, the linear influence of removing instance j (Problem 4).
Retracing SGD backwards (Section 4):
    for t = T−1, …, 1:
        L̂_{−j} += ⟨u, η_t/|S_t| · g(z_j; θ[t])⟩   for every j ∈ S_t
        u ← u − η_t · H[t] u                       (u[t−1] = Z_t u[t], Z_t = I − η_t H[t])
H[t] is the Hessian of the mean mini-batch loss at θ[t]. An instance used in several epochs
collects a term for each of its steps (the multi-epoch estimator, Section 5).
Negative L̂ = removing j lowers the query loss = j is harmful.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
from torch.func import grad, jvp

from .sgd import Objective, Params, Schedule, batch_weights, replay_epoch

# torch's forward-mode AD has one process-wide level: two threads inside jvp at once break each
# other ("no level exists"). Held for one step's pass, so concurrent scorings interleave.
FORWARD_AD = threading.Lock()


def hvp_and_dot_grads(obj: Objective, theta: Params, idx: torch.Tensor, w: torch.Tensor,
                      u: Params) -> tuple[Params, torch.Tensor]:
    """One forward-over-reverse pass at θ for the instances idx weighted by w: H u, H the Hessian
    of Σ_i w_i ℓ(z_i; θ), and ⟨u, g(z_i; θ)⟩ for every i in idx. The jvp of (∇θ weighted loss,
    per-instance losses) along u gives both at once: d/dε ∇θL(θ+εu) = H u and
    d/dε ℓ_i(θ+εu) = ⟨g_i, u⟩. No loop over instances. With w = batch_weights(keep, S_t) this is
    H[t]u of the mean mini-batch loss at step t; the one Hessian-vector product of the engine."""

    def grad_and_losses(th):
        g, (ell, _) = grad(obj.weighted, has_aux=True)(th, w, idx)
        return g, ell

    with FORWARD_AD:
        _, (hu, u_dot_g) = jvp(grad_and_losses, (theta,), (u,))
    return hu, u_dot_g


def retrace(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
            keep_at: Callable[[int], torch.Tensor], u: Params, epochs: range,
            on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Algorithm 2 over the given epochs (all of them: exact retrace; the last one: the
    approximate version of Section 7.2). Returns L̂_{−j}(u) for every training position j.
    on_step(t) after every replayed step and every retraced step (progress)."""
    scores = torch.zeros(obj.x.shape[0], dtype=obj.x.dtype, device=obj.x.device)
    for k in reversed(epochs):
        keep = keep_at(k)
        thetas = replay_epoch(obj, schedule, checkpoints[k], k, keep, on_step)  # θ[t] of epoch k
        for t, theta in zip(reversed(schedule.epoch_steps(k)), reversed(thetas)):
            idx = torch.as_tensor(schedule.batch(t), device=obj.x.device)
            eta = float(schedule.lr[t])
            w = batch_weights(keep, idx, obj.x.dtype)  # 1/|S_t|; removed instances get 0
            hu, u_dot_g = hvp_and_dot_grads(obj, theta, idx, w, u)
            # L̂_{−j} += ⟨u, η_t/|S_t| g(z_j; θ[t])⟩
            scores.index_add_(0, idx, eta * w * u_dot_g)
            u = {name: u[name] - eta * hu[name] for name in u}  # u ← (I − η_t H[t]) u
            if on_step:
                on_step(t)
    return scores


def loss_gradient(loss_fn: Callable[[Params], torch.Tensor], theta: Params) -> Params:
    """u = ∇θ of any scalar loss at θ[T], e.g. the mean validation loss or one test image's."""
    return grad(loss_fn)(theta)
