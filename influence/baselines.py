"""Baselines that rank training instances, with SGD-influence's sign convention:
one score per training position, negative = harmful / more suspicious, most suspicious first
when sorted ascending.

    koh_liang          influence function (Koh & Liang 2017): +(1/n)·∇L_val(θ)ᵀ (H + λI)⁻¹ ∇ℓ_j
    tracin             TracIn-CP (Pruthi et al. 2020) over the stored epoch checkpoints
    isolation_forest   scikit-learn's Isolation Forest on the network's penultimate features
    autoencoder        reconstruction error of a small autoencoder on the training images
    confident_learning_pixels  cleanlab's label-quality score from out-of-fold probabilities of
                       a raw-pixel logistic regression (the label check itself, on the user's
                       own model, is influence.labels)
    random             seeded random scores

Each `name(run, …)` takes a trained `runs.Run` and returns one score per training position;
`influence.methods` registers them next to SGD-influence. The first two have a general form on an
`Objective` (`influence_function`, `tracin_scores`) so that benchmarks can use them on non-image
data.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, minres
from torch import nn
from torch.func import jvp, vmap

from . import models
from .progress import Progress, ProgressFn
from .sgd import Objective, Params, Schedule
from .sgd_influence import FORWARD_AD, hvp_and_dot_grads, loss_gradient

# Solve H v = u exactly (dense Hessian) up to this many parameters and parameters × instances;
# otherwise iteratively (MINRES on Hessian-vector products).
EXACT_MAX_PARAMS, EXACT_MAX_WORK = 2000, 4_000_000
CHUNK = 1024  # instances per batched pass
KL_ITERATIONS, KL_HESSIAN_SAMPLES = 50, 2000  # koh_liang's defaults: its cost is about
# KL_ITERATIONS Hessian-vector products over KL_HESSIAN_SAMPLES instances


# --- helpers shared by the gradient-based baselines --------------------------------------------
def dot_grads(obj: Objective, theta: Params, v: Params) -> torch.Tensor:
    """⟨v, g(z_j; θ)⟩ for every training position j, with no loop over instances: the jvp of the
    per-instance losses along v is d/dε ℓ_j(θ + εv) = ⟨g_j, v⟩."""
    out = []
    for idx in torch.arange(len(obj.y), device=obj.y.device).split(CHUNK):
        with FORWARD_AD:  # forward-mode AD is process-wide: one thread in it at a time
            out.append(jvp(lambda th: obj.losses(th, idx)[0], (theta,), (v,))[1])
    return torch.cat(out)


def _mean_loss_parts(obj: Objective, keep: torch.Tensor):
    """(chunk positions, weights 1/n) covering the n kept training instances."""
    kept = torch.nonzero(keep).squeeze(1)
    w = torch.full((len(kept),), 1.0 / len(kept), dtype=obj.x.dtype, device=obj.x.device)
    return list(zip(kept.split(CHUNK), w.split(CHUNK)))


def hvp(obj: Objective, theta: Params, keep: torch.Tensor, v: Params) -> Params:
    """H v, H the Hessian at θ of the mean training loss (1/n)·Σ_{j kept} ℓ(z_j; θ)."""
    total = {k: torch.zeros_like(p) for k, p in theta.items()}
    for idx, w in _mean_loss_parts(obj, keep):
        hv = hvp_and_dot_grads(obj, theta, idx, w, v)[0]
        total = {k: total[k] + hv[k] for k in total}
    return total


def _flat(p: Params) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in p.values()])


def _unflat(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = vec[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


def dense_hessian(obj: Objective, theta: Params, keep: torch.Tensor) -> torch.Tensor:
    """The d×d Hessian of the mean training loss in float64, one batch of columns H·e_i at a
    time (vmap over the HVP)."""
    theta64 = {k: p.double() for k, p in theta.items()}
    obj64 = Objective(obj.model, obj.x.double(), obj.y, obj.l2, obj.loss)
    column = lambda e: _flat(hvp(obj64, theta64, keep, _unflat(e, theta64)))  # noqa: E731
    eye = torch.eye(sum(p.numel() for p in theta.values()), dtype=torch.float64,
                    device=obj.x.device)
    return torch.cat([vmap(column)(basis) for basis in eye.split(256)])


def inverse_hvp(obj: Objective, theta: Params, keep: torch.Tensor, u: Params,
                damping: float, cg_iters: int = 100, H: torch.Tensor | None = None,
                on_iteration: Callable[[], None] | None = None) -> Params:
    """(H + λI)⁻¹ u: a dense solve for small models (or when H is given), otherwise MINRES
    (conjugate-gradient family; also valid where H + λI is indefinite, as for deep nets) on
    torch.func HVPs, calling on_iteration after each iteration. In float64 either way."""
    u_flat = _flat(u).double()
    d, n = u_flat.numel(), int(keep.sum())
    if H is not None or (d <= EXACT_MAX_PARAMS and d * n <= EXACT_MAX_WORK):
        H = dense_hessian(obj, theta, keep) if H is None else H
        v = torch.linalg.solve(H + damping * torch.eye(d, dtype=H.dtype, device=H.device), u_flat)
    else:
        def matvec(x: np.ndarray) -> np.ndarray:
            xv = _unflat(torch.as_tensor(x, dtype=obj.x.dtype, device=obj.x.device), theta)
            return _flat(hvp(obj, theta, keep, xv)).double().cpu().numpy() + damping * x

        op = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
        v = torch.as_tensor(minres(op, u_flat.cpu().numpy(), maxiter=cg_iters,
                                   callback=on_iteration and (lambda _: on_iteration()))[0])
    return _unflat(v.to(device=obj.x.device, dtype=obj.x.dtype), theta)


# --- Koh & Liang influence function -------------------------------------------------------
def influence_function(obj: Objective, theta: Params, u: Params, keep: torch.Tensor,
                       damping: float = 0.01, cg_iters: int = 50,
                       H: torch.Tensor | None = None, hessian_samples: int | None = None,
                       seed: int = 0, on_iteration: Callable[[], None] | None = None
                       ) -> np.ndarray:
    """Estimated change of the query loss when j is removed, for every training position j.

    θ minimises (1/n)·Σ_i ℓ_i; dropping ℓ_j moves it by θ_{−j} − θ ≈ (1/n)·H⁻¹∇ℓ_j, so the
    query changes by +(1/n)·uᵀ(H + λI)⁻¹∇ℓ_j (u = ∇θ query loss). λ (damping) keeps the solve
    well-posed where H is singular or indefinite (deep nets). H: a precomputed dense Hessian
    (`dense_hessian`) to reuse across several λ. hessian_samples: estimate H on that many
    randomly drawn training instances (as Koh & Liang's stochastic estimator does) to bound
    the cost on large sets."""
    n = int(keep.sum())
    on = keep
    if hessian_samples is not None and hessian_samples < n:
        kept = torch.nonzero(keep).squeeze(1)
        pick = kept[torch.randperm(n, generator=torch.Generator().manual_seed(seed))
                    [:hessian_samples].to(kept.device)]
        on = torch.zeros_like(keep)
        on[pick] = True
    v = inverse_hvp(obj, theta, on, u, damping, cg_iters, H, on_iteration)
    return (dot_grads(obj, theta, v) / n).detach().cpu().double().numpy()


def koh_liang(run, damping: float = 0.01, cg_iters: int = KL_ITERATIONS,
              hessian_samples: int | None = KL_HESSIAN_SAMPLES, seed: int = 0,
              query: Callable[[Params], torch.Tensor] | None = None,
              on_progress: ProgressFn | None = None) -> np.ndarray:
    """Koh & Liang's influence function at θ[T] on the mean validation loss (or `query`); the
    Hessian is estimated on at most `hessian_samples` training instances."""
    u = loss_gradient(query or run.val_loss_fn, run.theta)
    keep = run.keep_at(run.schedule.epochs - 1)
    solved = iter(range(1, cg_iters + 1))
    scores = influence_function(
        run.objective, run.theta, u, keep, damping, cg_iters, hessian_samples=hessian_samples,
        seed=seed, on_iteration=on_progress and (
            lambda: on_progress(Progress("rank", next(solved), cg_iters))))
    return _finished(scores, on_progress)


# --- TracIn ---------------------------------------------------------------------------------
def tracin_scores(obj: Objective, schedule: Schedule, checkpoints: dict[int, Params],
                  query: Callable[[Params], torch.Tensor],
                  on_progress: ProgressFn | None = None) -> np.ndarray:
    """TracIn-CP: Σ_k η_k/|S|·⟨∇query(θ_k), ∇ℓ_j(θ_k)⟩ over the checkpoints θ_k at the end of
    every epoch k, η_k the mean learning rate of that epoch. Training on a proponent (positive
    dot product) lowers the query loss, so removing it raises it: positive = helpful, negative =
    harmful, as for SGD-influence (whose Hessian-free first-order version this is)."""
    total = torch.zeros(len(obj.y), dtype=torch.float64)
    for k in range(1, schedule.epochs + 1):
        steps = schedule.epoch_steps(k - 1)
        eta = float(np.mean(schedule.lr[steps.start:steps.stop]))
        u = loss_gradient(query, checkpoints[k])
        total += eta / schedule.batch_size * dot_grads(obj, checkpoints[k], u).cpu().double()
        if on_progress:
            on_progress(Progress("rank", k, schedule.epochs))
    return total.numpy()


def tracin(run, query: Callable[[Params], torch.Tensor] | None = None,
           on_progress: ProgressFn | None = None) -> np.ndarray:
    """TracIn over the run's epoch checkpoints on the mean validation loss (or `query`)."""
    return tracin_scores(run.objective, run.schedule, run.checkpoints,
                         query or run.val_loss_fn, on_progress)


# --- outlier detectors -----------------------------------------------------------------------
def features(run, x: torch.Tensor | None = None) -> np.ndarray:
    """Penultimate-layer features of the trained network for the training images (or x)."""
    x = run.objective.x if x is None else x
    with torch.no_grad():
        return torch.cat([models.penultimate_features(run.model, run.theta, xb)
                          for xb in x.split(CHUNK)]).cpu().double().numpy()


def isolation_forest(run, seed: int = 0, on_progress: ProgressFn | None = None) -> np.ndarray:
    """Isolation Forest on the CNN's penultimate features; its decision function is negative
    for outliers, so the most anomalous instances rank first."""
    from sklearn.ensemble import IsolationForest

    z = features(run)
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(z)
    return _finished(forest.decision_function(z), on_progress)


def autoencoder(run, epochs: int = 20, hidden: int = 64, code: int = 16, seed: int = 0,
                lr: float = 1e-3, batch_size: int = 128,
                on_progress: ProgressFn | None = None) -> np.ndarray:
    """Minus the reconstruction error (mean squared, per image) of a small fully connected
    autoencoder (d→hidden→code→hidden→d, Adam) trained on the training images: the images it
    reconstructs worst rank first."""
    x = run.objective.x.reshape(len(run.objective.x), -1).float()
    d = x.shape[1]
    with models.seeded(seed):
        net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU(),
                            nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, d),
                            nn.Sigmoid()).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = ((net(x[idx]) - x[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_progress:
            on_progress(Progress("rank", epoch + 1, epochs))
    with torch.no_grad():
        error = torch.cat([((net(xb) - xb) ** 2).mean(1) for xb in x.split(CHUNK)])
    return -error.cpu().double().numpy()


# --- confident learning -------------------------------------------------------------------
def pixel_probabilities(x: np.ndarray, y: np.ndarray, folds: int = 5,
                        seed: int = 0) -> np.ndarray:
    """Class probabilities for every instance from a model that never saw it: k-fold
    cross-validated logistic regression on the standardised pixels' first 50 principal
    components (cleanlab's quick-start recipe with a cheap classifier that is independent of
    the network being cleaned)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = max(2, min(folds, int(np.bincount(y).min())))
    model = make_pipeline(StandardScaler(), PCA(min(50, *x.shape), random_state=seed),
                          LogisticRegression(max_iter=500))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, x, y, cv=cv, method="predict_proba")


def confident_learning_pixels(run, folds: int = 5, seed: int = 0,
                              on_progress: ProgressFn | None = None) -> np.ndarray:
    """The raw-pixel variant of the label check, kept as a benchmark baseline: cleanlab's
    label-quality score (self-confidence of the given label under out-of-fold probabilities of
    pixel_probabilities), minus 1: in [−1, 0], the likeliest label errors rank first. Measured
    in benchmarks/results/noisy.md against the check on the run's own model (labels.py)."""
    from cleanlab.rank import get_label_quality_scores

    x = run.objective.x.reshape(len(run.objective.x), -1).cpu().double().numpy()
    y = run.objective.y.cpu().numpy()
    probs = pixel_probabilities(x, y, folds, seed)
    if probs.shape[1] < len(run.data.classes):  # a class missing from training: pad columns
        probs = np.pad(probs, ((0, 0), (0, len(run.data.classes) - probs.shape[1])))
    return _finished(get_label_quality_scores(y, probs) - 1.0, on_progress)


def random(run, seed: int = 0, on_progress: ProgressFn | None = None) -> np.ndarray:
    """Seeded random scores: what any method must beat."""
    return _finished(np.random.default_rng(seed).standard_normal(len(run.train_ids)),
                     on_progress)


def _finished(scores: np.ndarray, on_progress: ProgressFn | None) -> np.ndarray:
    """Report a ranking as complete (the last progress report; a cancel asked for meanwhile
    stops here)."""
    if on_progress:
        on_progress(Progress("rank", 1, 1))
    return scores
