"""Algorithm 2 (inference phase): SGD-influence of every training instance on a query.

L̂_{−j}(u) ≈ ⟨u, θ_{−j}[T] − θ[T]⟩, the linear influence of removing instance j (Problem 4).
Retracing SGD backwards (Section 4):
    for t = T−1, …, 1:
        L̂_{−j} += ⟨u, η_t/|S_t| · g(z_j; θ[t])⟩   for every j ∈ S_t
        u ← u − η_t · H[t] u                       (u[t−1] = Z_t u[t], Z_t = I − η_t H[t])
H[t] is the Hessian of the mean mini-batch loss at θ[t]. An instance used in several epochs
collects a term for each of its steps (the multi-epoch estimator, Section 5).
Negative L̂ = removing j lowers the query loss = j is harmful.

Relabelling (the same retrace). With f_j = f(x_j; θ) the model outputs (logits) and J_j[t] their
Jacobian in θ at θ[t], every per-instance gradient is g(z_j; θ) = J_jᵀ ∂ℓ/∂f(f_j, y_j) + αθ. Giving
j the label c instead of y_j changes it by J_jᵀ Δ_jc, Δ_jc = ∂ℓ/∂f(f_j, c) − ∂ℓ/∂f(f_j, y_j), so the
counterfactual step moves θ by −η_t/|S_t| J_jᵀ Δ_jc (where removal moves it by +η_t/|S_t| g_j) and
    L̂_{j→c} += −η_t/|S_t| ⟨J_j[t] u, Δ_jc⟩           for every j ∈ S_t and every class c,
with the same u at the same step as for removal. J_j[t] u for the whole batch is the tangent of
the batch's outputs along u: it comes out of the jvp that gives H[t]u (forward_over_reverse).
    cross-entropy, and squared loss on one-hot targets:  Δ_jc = e_{y_j} − e_c,
        L̂_{j→c} = Σ_{t: j∈S_t} η_t/|S_t| ((J_j[t]u)_c − (J_j[t]u)_{y_j});
    binary cross-entropy (one logit):  Δ = 2y_j − 1 for c = 1 − y_j,
        L̂_{j→1−y} = −Σ_{t: j∈S_t} η_t/|S_t| (J_j[t]u)(2y_j − 1).
Negative L̂_{j→c} = giving j the label c lowers the query loss, as for removal.

Many queries at once (retrace_queries). The retrace is linear in u, and θ[t] and H[t] do not depend
on it: Q queries u_1 … u_Q (e.g. the loss gradients of Q test images, sample_loss_gradients)
share one replay of the θ[t], and each step's jvp carries the Q tangents together
(torch.func.vmap over u), giving the Q × N matrix L̂_{−j}(u_q) row by row equal to Q retraces.

forward_influence keeps the one first-order term Algorithm 2 drops (j's gradient taken at the
counterfactual parameters when j returns in a later epoch), forward in time for a chosen set of
instances; refine_extremes applies it to the two ends of an Algorithm-2 ranking.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch.func import grad, jvp, vjp, vmap

from .sgd import Objective, Params, Schedule, batch_weights, replay_epoch

# torch's forward-mode AD has one process-wide level: two threads inside jvp at once break each
# other ("no level exists"). Held for one step's pass, so concurrent scorings interleave.
FORWARD_AD = threading.Lock()


def forward_over_reverse(obj: Objective, theta: Params, idx: torch.Tensor, w: torch.Tensor,
                         u: Params, labels: torch.Tensor | None = None
                         ) -> tuple[Params, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward-over-reverse pass at θ for the instances idx weighted by w: H u, H the Hessian
    of Σ_i w_i ℓ(z_i; θ); ⟨u, g(z_i; θ)⟩ for every i in idx; the outputs f_i; and J_i u, the
    outputs' Jacobian times u. The jvp of (∇θ weighted loss, per-instance losses, outputs)
    along u gives all at once: d/dε ∇θL(θ+εu) = H u, d/dε ℓ_i(θ+εu) = ⟨g_i, u⟩ and
    d/dε f_i(θ+εu) = J_i u (forward mode computes that tangent on the way to ℓ_i's anyway). No
    loop over instances. With w = batch_weights(keep, S_t) this is H[t]u of the mean mini-batch
    loss at step t; the one Hessian-vector product of the engine. `labels`: the labels in use
    (default the objective's y)."""

    def grad_losses_outputs(th):
        g, (ell, out) = grad(obj.weighted, has_aux=True)(th, w, idx, labels)
        return g, ell, out

    with FORWARD_AD:
        (_, _, out), (hu, u_dot_g, ju) = jvp(grad_losses_outputs, (theta,), (u,))
    return hu, u_dot_g, out, ju


def gauss_newton_pass(obj: Objective, theta: Params, idx: torch.Tensor, w: torch.Tensor,
                      u: Params, labels: torch.Tensor | None = None
                      ) -> tuple[Params, torch.Tensor, torch.Tensor, torch.Tensor]:
    """forward_over_reverse with the Gauss-Newton matrix G in place of H: G u with
    G = Σ_i w_i J_iᵀ ∇²_f ℓ(f_i, y_i) J_i + α Σ_i w_i I (the outputs' Jacobian J_i, the loss's
    curvature in the outputs, the L2 term α), which drops the part of H that comes from the
    network's own second derivatives and is positive semi-definite for a convex loss of the
    outputs, so (I − η_t G) never grows u along a negative-curvature direction. Equal to H u
    for a model linear in θ. ⟨u, g(z_i; θ)⟩ = ⟨∂ℓ/∂f(f_i, y_i), J_i u⟩ + α⟨θ, u⟩ comes from
    the same jvp (no Hessian needed)."""
    y = (obj.y if labels is None else labels)[idx]

    def outputs(th):
        return obj.outputs(th, obj.x[idx])

    def loss_grad(f):  # ∂ℓ/∂f(f_i, y_i) of every instance (the sum separates)
        return grad(lambda f: obj.loss(f, y).sum())(f)

    with FORWARD_AD:
        out, ju = jvp(outputs, (theta,), (u,))  # f_i, J_i u
        dl_df, h_ju = jvp(loss_grad, (out,), (ju,))  # ∂ℓ/∂f, ∇²_f ℓ J_i u
    gu = vjp(outputs, theta)[1](w[:, None] * h_ju)[0]  # Σ_i w_i J_iᵀ ∇²_f ℓ J_i u
    u_dot_g = (dl_df * ju).flatten(1).sum(1)
    if obj.l2:
        gu = {name: gu[name] + obj.l2 * w.sum() * u[name] for name in gu}
        u_dot_g = u_dot_g + obj.l2 * sum((theta[name] * u[name]).sum() for name in u)
    return gu, u_dot_g, out, ju


# the curvature a retrace step uses: "hessian" (Algorithm 2) or "gauss-newton"
CURVATURE_PASSES = {"hessian": forward_over_reverse, "gauss-newton": gauss_newton_pass}


def hvp_and_dot_grads(obj: Objective, theta: Params, idx: torch.Tensor, w: torch.Tensor,
                      u: Params, labels: torch.Tensor | None = None
                      ) -> tuple[Params, torch.Tensor]:
    """H u and ⟨u, g(z_i; θ)⟩ for every i in idx: forward_over_reverse without the outputs."""
    hu, u_dot_g, _, _ = forward_over_reverse(obj, theta, idx, w, u, labels)
    return hu, u_dot_g


def label_change_dots(loss: Callable, out: torch.Tensor, ju: torch.Tensor, y: torch.Tensor,
                      classes: int) -> torch.Tensor:
    """⟨Δ_ic, J_i u⟩ for every instance i and class c (B × C), Δ_ic = ∂ℓ/∂f(f_i, c) −
    ∂ℓ/∂f(f_i, y_i): relabelling i from y_i to c changes ⟨g(z_i; θ), u⟩ by this (g = J_iᵀ ∂ℓ/∂f).
    ⟨∂ℓ/∂f(f_i, c), J_i u⟩ is the tangent of the loss at label c along the outputs' tangent J_i u:
    one jvp of the loss itself at every label (any loss of the outputs). Closed forms: (J_i u)_{y_i}
    − (J_i u)_c for cross-entropy and for squared loss on one-hot targets, (y_i − c)(J_i u) for
    binary cross-entropy on one logit; 0 for c = y_i."""
    b = out.shape[0]
    labels = torch.arange(classes, device=out.device).repeat_interleave(b)

    def every_label(f):  # ℓ(f_i, c) for every class c: B × C
        return loss(f.repeat(classes, *[1] * (f.dim() - 1)), labels).view(classes, b).T

    with FORWARD_AD:
        along = jvp(every_label, (out,), (ju,))[1]
    return along - along.gather(1, y[:, None])


def retrace(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
            keep_at: Callable[[int], torch.Tensor], u: Params, epochs: range,
            on_step: Callable[[int], None] | None = None,
            labels_at: Callable[[int], torch.Tensor] | None = None,
            every: int | None = None, damping: float = 0.0,
            curvature: str = "hessian", ahead: bool = False) -> torch.Tensor:
    """Algorithm 2 over the given epochs (all of them: exact retrace; the last one: the
    approximate version of Section 7.2). Returns L̂_{−j}(u) for every training position j.
    on_step(t) after every replayed step and every retraced step (progress). labels_at(k): the
    labels used in epoch k (default the objective's y). every: the replay keeps every
    `every`-th θ of an epoch (replay_epoch; default ⌈√T_k⌉, 1: every θ); ahead: each epoch
    replayed in a thread while the epoch after it is retraced (replayed_epochs).
    damping λ: the damped retrace u ← (1 − λη_t)(I − η_t H[t]) u, exact for counterfactual SGD
    whose displacement from the recorded run decays by (1 − λη_t) at every step (influence/
    horizon.py); curvature: "hessian" (H[t], Algorithm 2) or "gauss-newton" (its
    Gauss-Newton part, gauss_newton_pass)."""
    return _retrace(obj, schedule, checkpoints, keep_at, u, epochs, on_step, labels_at,
                    every=every, damping=damping, curvature=curvature, ahead=ahead)[0]


def retrace_with_relabel(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                         keep_at: Callable[[int], torch.Tensor], u: Params, epochs: range,
                         classes: int, on_step: Callable[[int], None] | None = None,
                         labels_at: Callable[[int], torch.Tensor] | None = None,
                         every: int | None = None, ahead: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2 as `retrace`, also accumulating the relabel effect L̂_{j→c}(u) of every
    training position j and class c (N × classes) from the same pass (see the module notes):
    label c in every retraced step. 0 for removed instances, and for c = the label j has at
    every retraced step."""
    return _retrace(obj, schedule, checkpoints, keep_at, u, epochs, on_step, labels_at, classes,
                    every, ahead=ahead)


def replayed_epochs(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                    keep_at: Callable[[int], torch.Tensor], epochs: range,
                    on_step: Callable[[int], None] | None = None,
                    labels_at: Callable[[int], torch.Tensor] | None = None,
                    every: int | None = None, ahead: bool = False):
    """(k, the epoch's mask, its labels, θ[t] of its steps) for the epochs from the last back,
    θ[t] replayed from the epoch's checkpoint (replay_epoch, keeping every `every`-th θ).
    ahead: every θ of an epoch is replayed in a thread of its own while the caller retraces the
    epoch after it (two epochs of θ in memory; the replay is a fifth of a retraced step's work
    and runs on another core). The same bits either way."""
    def replay(k: int):
        keep = keep_at(k)
        labels = labels_at(k) if labels_at else obj.y
        thetas = replay_epoch(obj, schedule, checkpoints[k], k, keep, on_step, labels,
                              1 if ahead else every)
        return k, keep, labels, list(thetas) if ahead else thetas

    order = list(reversed(epochs))
    if not ahead:
        yield from map(replay, order)
        return
    threads = torch.get_num_threads()  # the replay thread sums as the caller does: same bits
    with ThreadPoolExecutor(1, initializer=torch.set_num_threads,
                            initargs=(threads,)) as pool:
        pending = pool.submit(replay, order[0])
        for k in order[1:]:
            replayed, pending = pending.result(), pool.submit(replay, k)
            yield replayed
        yield pending.result()


def retraced_steps(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                   keep_at: Callable[[int], torch.Tensor], epochs: range,
                   on_step: Callable[[int], None] | None = None,
                   labels_at: Callable[[int], torch.Tensor] | None = None,
                   every: int | None = None, ahead: bool = False):
    """The steps of Algorithm 2 in the order it retraces them, t = T−1, …, 1 over `epochs`:
    (t, θ[t], S_t, η_t, w, labels) with w_i = 1/|S_t| (0 for removed instances). θ[t] is
    replayed epoch by epoch from the checkpoints (replayed_epochs; on_step(t) after each
    replayed step); the caller calls on_step(t) after retracing step t."""
    for k, keep, labels, thetas in replayed_epochs(obj, schedule, checkpoints, keep_at, epochs,
                                                   on_step, labels_at, every, ahead):
        for t, theta in zip(reversed(schedule.epoch_steps(k)), reversed(thetas)):
            idx = torch.as_tensor(schedule.batch(t), device=obj.x.device)
            yield t, theta, idx, float(schedule.lr[t]), batch_weights(keep, idx, obj.x.dtype), \
                labels


def _retrace(obj, schedule, checkpoints, keep_at, u, epochs, on_step=None, labels_at=None,
             classes: int | None = None, every: int | None = None, damping: float = 0.0,
             curvature: str = "hessian", ahead: bool = False):
    step_pass = CURVATURE_PASSES[curvature]
    scores = torch.zeros(obj.x.shape[0], dtype=obj.x.dtype, device=obj.x.device)
    relabel = None if classes is None else torch.zeros(obj.x.shape[0], classes,
                                                       dtype=obj.x.dtype, device=obj.x.device)
    for t, theta, idx, eta, w, labels in retraced_steps(obj, schedule, checkpoints, keep_at,
                                                        epochs, on_step, labels_at, every,
                                                        ahead):
        if damping:  # the damped retrace: u ← (1 − λη_t) u first (retrace)
            u = {name: (1 - damping * eta) * v for name, v in u.items()}
        hu, u_dot_g, out, ju = step_pass(obj, theta, idx, w, u, labels)
        # L̂_{−j} += ⟨u, η_t/|S_t| g(z_j; θ[t])⟩
        scores.index_add_(0, idx, eta * w * u_dot_g)
        if relabel is not None:  # L̂_{j→c} += −η_t/|S_t| ⟨J_j[t]u, Δ_jc⟩
            dots = label_change_dots(obj.loss, out, ju, labels[idx], classes)
            relabel.index_add_(0, idx, -eta * w[:, None] * dots)
        u = {name: u[name] - eta * hu[name] for name in u}  # u ← (I − η_t H[t]) u
        if on_step:
            on_step(t)
    return scores, relabel


def retrace_queries(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                    keep_at: Callable[[int], torch.Tensor], us: Params, epochs: range,
                    on_step: Callable[[int], None] | None = None,
                    labels_at: Callable[[int], torch.Tensor] | None = None,
                    every: int | None = None, ahead: bool = False) -> torch.Tensor:
    """Algorithm 2 for Q queries at once: `us` holds Q query vectors u_q (parameters with a
    leading dimension Q). Returns the Q × N matrix L̂_{−j}(u_q). One replay of the θ[t] serves
    every query; each step's jvp carries the Q tangents together (torch.func.vmap over u), so
    row q equals retrace(…, u_q, …) at a fraction of Q retraces."""
    n_queries = next(iter(us.values())).shape[0]
    scores = torch.zeros(n_queries, obj.x.shape[0], dtype=obj.x.dtype, device=obj.x.device)
    for t, theta, idx, eta, w, labels in retraced_steps(obj, schedule, checkpoints, keep_at,
                                                        epochs, on_step, labels_at, every,
                                                        ahead):
        hu, u_dot_g = vmap(lambda u: hvp_and_dot_grads(obj, theta, idx, w, u, labels))(us)
        # L̂_{−j}(u_q) += ⟨u_q, η_t/|S_t| g(z_j; θ[t])⟩ for every q
        scores.index_add_(1, idx, eta * w * u_dot_g)
        us = {name: us[name] - eta * hu[name] for name in us}  # u_q ← (I − η_t H[t]) u_q
        if on_step:
            on_step(t)
    return scores


def sample_loss_gradients(obj: Objective, theta: Params) -> Params:
    """∇θ ℓ(z_q; θ) of every instance q of `obj` (no L2 term: a query is a loss on held-out
    images), as parameters with a leading dimension Q: torch.func per-sample gradients."""
    return vmap(grad(lambda th, x, y: obj.loss(obj.outputs(th, x[None]), y[None]).sum()),
                in_dims=(None, 0, 0))(theta, obj.x, obj.y)


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
