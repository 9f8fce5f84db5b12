"""Algorithm 2 (inference phase): SGD-influence of every training instance on a query.

L̂_{−j}(u) ≈ ⟨u, θ_{−j}[T] − θ[T]⟩, the linear influence of removing instance j (Problem 4).
Retracing SGD backwards (Section 4):
    for t = T−1, …, 1:
        L̂_{−j} += ⟨u, η_t/|S_t| · g(z_j; θ[t])⟩   for every j ∈ S_t
        u ← u − η_t · H[t] u                       (u[t−1] = Z_t u[t], Z_t = I − η_t H[t])
H[t] is the Hessian of the mean mini-batch loss at θ[t]. An instance used in several epochs
collects a term for each of its steps (the multi-epoch estimator, Section 5).
Negative L̂ = removing j lowers the query loss = j is harmful.

forward_influence keeps the one first-order term Algorithm 2 drops (j's gradient taken at the
counterfactual parameters when j returns in a later epoch), forward in time for a chosen set of
instances; refine_extremes applies it to the two ends of an Algorithm-2 ranking.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
from torch.func import grad, jvp, vmap

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


def forward_displacement(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                         keep_at: Callable[[int], torch.Tensor], members: torch.Tensor,
                         on_step: Callable[[int], None] | None = None) -> Params:
    """δ_j[T] for every training position j in `members` (the set M), as parameters with a
    leading dimension |M|: the first-order-exact linearisation of θ_{−j}[t] − θ[t], computed
    forward in time.

    Definition 2, θ_{−j}[t+1] = θ_{−j}[t] − η_t/|S_t| Σ_{i∈S_t, i≠j} g(z_i; θ_{−j}[t]),
    linearised around the recorded θ[t] (g(z_i; θ + δ) ≈ g(z_i; θ) + H_i[t] δ) gives, with δ = 0
    at θ[1]:
        δ_j ← δ_j − η_t H[t] δ_j                                  for every j ∈ M
        δ_j ← δ_j + η_t/|S_t| (g(z_j; θ[t]) + H_j[t] δ_j)          for j ∈ S_t ∩ M
    both with δ_j[t] on the right; H[t] is the Hessian of the mean mini-batch loss, H_j[t] that
    of ℓ(z_j) alone. Algorithm 2 drops H_j[t] δ_j: when j returns in a later epoch it takes j's
    gradient on the original trajectory, not the counterfactual one. Keeping it makes the
    estimate exact for a quadratic loss over any number of epochs.

    H[t] − 1/|S_t| H_j[t] is the Hessian of j's own counterfactual batch loss (weights
    batch_weights with j removed, the divisor still |S_t|), so each row of δ costs one HVP
    with its own weights, vmapped over M: cost ∝ |M| HVPs per step, plus the gradients of the
    members in S_t. θ[t] is replayed epoch by epoch from the checkpoints, as in retrace.
    Instances removed in epoch k (keep_at(k)) have weight 0: removing them again changes nothing.
    """
    members = torch.as_tensor(members, device=obj.x.device)
    delta = {name: torch.zeros(len(members), *p.shape, dtype=p.dtype, device=p.device)
             for name, p in checkpoints[0].items()}
    for k in range(schedule.epochs):
        keep = keep_at(k)
        for t, theta in zip(schedule.epoch_steps(k), replay_epoch(obj, schedule, checkpoints[k],
                                                                    k, keep)):
            idx = torch.as_tensor(schedule.batch(t), device=obj.x.device)
            eta = float(schedule.lr[t])
            w = batch_weights(keep, idx, obj.x.dtype)  # 1/|S_t|; removed instances get 0
            own = members[:, None] == idx[None, :]  # |M| × |S_t|: row j's instance in S_t
            w_minus = w * ~own  # row j: the weights of j's counterfactual batch
            # (H[t] − 1/|S_t| H_j[t]) δ_j for every row at once
            h_delta = vmap(lambda wr, d: hvp_and_dot_grads(obj, theta, idx, wr, d)[0])(
                w_minus, delta)
            delta = {name: d - eta * h_delta[name] for name, d in delta.items()}
            rows = own.any(1).nonzero().squeeze(1)  # j ∈ S_t ∩ M
            if len(rows):  # + η_t/|S_t| g(z_j; θ[t]): the weights select instance j
                g_own = vmap(lambda wr: grad(obj.weighted, has_aux=True)(theta, wr, idx)[0])(
                    (w * own)[rows])
                for name, d in delta.items():
                    d.index_add_(0, rows, eta * g_own[name])
            if on_step:
                on_step(t)
    return delta


def forward_influence(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                      keep_at: Callable[[int], torch.Tensor], u: Params, members: torch.Tensor,
                      on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """L_{−j}(u) ≈ ⟨u, δ_j[T]⟩ for every j in `members`, δ from forward_displacement: the linear
    influence of Problem 4, like retrace but with the cross-epoch term kept.
    Negative = removing j lowers the query loss = j is harmful, as for retrace."""
    delta = forward_displacement(obj, schedule, checkpoints, keep_at, members, on_step)
    return sum((u[name] * d).flatten(1).sum(1) for name, d in delta.items())


def forward_loss_change(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                        keep_at: Callable[[int], torch.Tensor],
                        loss_fn: Callable[[Params], torch.Tensor], members: torch.Tensor,
                        on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """loss(θ[T] + δ_j[T]) − loss(θ[T]) for every j in `members`: the query loss itself at the
    linearised counterfactual parameters, instead of its first-order term ⟨∇loss, δ_j⟩. The
    displacement is the same; this also keeps the query loss's own curvature, which is what
    remains of the error of ⟨u, δ_j⟩ on a convex model. θ[T] = checkpoints[epochs]."""
    delta = forward_displacement(obj, schedule, checkpoints, keep_at, members, on_step)
    theta = checkpoints[schedule.epochs]
    with torch.no_grad():
        moved = vmap(lambda d: loss_fn({name: theta[name] + d[name] for name in theta}))(delta)
        return moved - loss_fn(theta)


def refine_extremes(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                    keep_at: Callable[[int], torch.Tensor], u: Params, scores: torch.Tensor,
                    m: int = 50, on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Algorithm 2's scores with the m most negative and the m most positive re-scored by
    forward_influence; the others unchanged. The ends are what the Jaccard index measures and
    what a user removes, at 2m/N of the cost of the forward estimate for everyone."""
    refined = torch.as_tensor(scores).clone()
    if m <= 0:
        return refined
    order = torch.argsort(refined, stable=True)
    ends = torch.unique(torch.cat([order[:m], order[max(len(order) - m, 0):]]))
    refined[ends] = forward_influence(obj, schedule, checkpoints, keep_at, u, ends,
                                      on_step).to(refined.dtype)
    return refined


def loss_gradient(loss_fn: Callable[[Params], torch.Tensor], theta: Params) -> Params:
    """u = ∇θ of any scalar loss at θ[T], e.g. the mean validation loss or one test image's."""
    return grad(loss_fn)(theta)
