"""Algorithm 1 (training phase): plain mini-batch SGD that records (S_t, η_t) for every step and
θ once per epoch; deterministic replay of an epoch; counterfactual SGD (Definition 2).

Notation follows the paper: θ[t] are the parameters before step t, S_t the mini-batch of step t,
η_t its learning rate, ℓ(z; θ) the per-instance loss including the L2 term, g = ∇θ ℓ.
One SGD step (Eq. 2):  θ[t+1] = θ[t] − η_t/|S_t| · Σ_{i∈S_t} g(z_i; θ[t]).
Steps are counted from 0 in code.

Labels: by default every step uses the objective's labels y. A run whose labels were fixed
(a counterfactual with some labels changed from some epoch on) gives the label vector in use
(one label per training position) to each step; removal masks and label vectors are the two
things a counterfactual run may change, nothing else.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, vmap

from . import models

Params = dict[str, torch.Tensor]


class Diverged(RuntimeError):
    """The loss became NaN, infinite or exploded; lowering the learning rate usually helps."""

    def __init__(self, step: int, loss: float, lr: float):
        self.step, self.loss, self.suggested_lr = step, loss, lr / 10
        super().__init__(
            f"training diverged at step {step + 1} (loss {loss:.3g}): the learning rate {lr:g} "
            f"is too high for this data; try {self.suggested_lr:g}")


def per_sample_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per instance; binary cross-entropy with logits for a single output."""
    if outputs.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(
            outputs[:, 0], targets.to(outputs.dtype), reduction="none")
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def predictions(outputs: torch.Tensor) -> torch.Tensor:
    return (outputs[:, 0] > 0).long() if outputs.shape[-1] == 1 else outputs.argmax(-1)


class Objective:
    """The training loss of one model on one training set, as functions of θ.

    ℓ(z_i; θ) = loss(f(x_i; θ), y_i) + ½·α·‖θ‖²  (the L2 term belongs to every instance)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0,
                 loss: Callable = per_sample_loss):
        self.model, self.x, self.y, self.l2, self.loss = model, x, y, l2, loss

    def outputs(self, theta: Params, x: torch.Tensor) -> torch.Tensor:
        return models.outputs(self.model, theta, x)

    def losses(self, theta: Params, idx: torch.Tensor, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """ℓ(z_i; θ) for i in idx, and the model outputs. `labels`: the label of every training
        position to use instead of y (a run with fixed labels)."""
        out = self.outputs(theta, self.x[idx])
        ell = self.loss(out, (self.y if labels is None else labels)[idx])
        if self.l2:
            ell = ell + 0.5 * self.l2 * sum((p * p).sum() for p in theta.values())
        return ell, out

    def weighted(self, theta: Params, w: torch.Tensor, idx: torch.Tensor,
                 labels: torch.Tensor | None = None):
        """Σ_i w_i ℓ(z_i; θ); with w_i = 1/|S_t| this is the mean mini-batch loss.
        Aux: per-instance losses and outputs."""
        ell, out = self.losses(theta, idx, labels)
        return (w * ell).sum(), (ell, out)


@dataclass(frozen=True)
class SGDConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    lr_decay: str = "constant"  # "constant": η_t = lr;  "inv_sqrt": η_t = lr/√t (t from 1)
    l2: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Schedule:
    """What Algorithm 1 records: for each epoch a seeded permutation of the training positions,
    cut into batches of `batch_size` (the last may be smaller), and η_t for every step."""

    order: np.ndarray  # K × N
    batch_size: int
    lr: np.ndarray  # T

    @property
    def epochs(self) -> int:
        return self.order.shape[0]

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.order.shape[1] / self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def epoch_steps(self, k: int) -> range:
        return range(k * self.steps_per_epoch, (k + 1) * self.steps_per_epoch)

    def batch(self, t: int) -> np.ndarray:
        """S_t as training positions."""
        k, b = divmod(t, self.steps_per_epoch)
        return self.order[k, b * self.batch_size:(b + 1) * self.batch_size]


def make_schedule(n: int, cfg: SGDConfig) -> Schedule:
    rng = np.random.default_rng(cfg.seed)
    order = np.stack([rng.permutation(n) for _ in range(cfg.epochs)]).astype(np.int64)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    t = np.arange(1, steps + 1, dtype=np.float64)
    lr = cfg.lr / np.sqrt(t) if cfg.lr_decay == "inv_sqrt" else np.full(steps, cfg.lr)
    return Schedule(order, cfg.batch_size, lr)


def initial_params(model: nn.Module, device, dtype) -> Params:
    return {k: v.detach().to(device=device, dtype=dtype).clone()
            for k, v in model.named_parameters()}


def batch_weights(keep: torch.Tensor, idx: torch.Tensor, dtype) -> torch.Tensor:
    """w_i = 1/|S_t| for kept instances and 0 for removed ones: Definition 2 keeps the divisor
    |S_t| of the full batch."""
    return keep[idx].to(dtype) / len(idx)


def kept_mean_weights(keep: torch.Tensor, idx: torch.Tensor, dtype) -> torch.Tensor:
    """w_i = 1/|S_t ∩ kept| for kept instances: unlike Definition 2, the step keeps its size
    when many instances are removed (SGD on the kept instances alone, with the same batches and
    η_t; no step where none is kept)."""
    kept = keep[idx].to(dtype)
    return kept / kept.sum().clamp(min=1)


@dataclass
class StepStats:
    step: int
    epoch: int
    loss: float  # mean loss over the kept instances of the batch
    accuracy: float


def sgd_step(obj: Objective, theta: Params, idx: torch.Tensor, lr: float, keep: torch.Tensor,
             weights: Callable = batch_weights, labels: torch.Tensor | None = None):
    """θ[t+1] = θ[t] − η_t/|S_t| · Σ_{i∈S_t, kept} g(z_i; θ[t])   (Eq. 2; Definition 2), with
    g taken at the labels in use (`labels`; default the objective's y)."""
    w = weights(keep, idx, obj.x.dtype)
    g, (ell, out) = grad(obj.weighted, has_aux=True)(theta, w, idx, labels)
    return {k: p - lr * g[k] for k, p in theta.items()}, (ell, out)


def batch_stats(obj: Objective, idx: torch.Tensor, keep: torch.Tensor, ell, out,
                labels: torch.Tensor | None = None):
    """Mean loss and accuracy over the kept instances of one batch, for the training log."""
    kept = keep[idx]
    n_kept = max(int(kept.sum()), 1)
    correct = (predictions(out) == (obj.y if labels is None else labels)[idx])[kept].sum()
    return float(ell[kept].sum()) / n_kept, float(correct) / n_kept


def run_sgd(obj: Objective, schedule: Schedule, theta: Params, keep_at: Callable[[int], torch.Tensor],
            epochs: range | None = None, on_step: Callable[[StepStats], None] | None = None,
            on_epoch: Callable[[int, Params], None] | None = None,
            labels_at: Callable[[int], torch.Tensor] | None = None):
    """Run SGD over `epochs` (default: all) from θ at the start of the first of them.

    keep_at(k) gives the boolean mask of training positions used in epoch k (all True for normal
    SGD), labels_at(k) the labels used in epoch k (default: the objective's y). on_step gets
    each step's batch loss and accuracy, on_epoch each epoch's final θ.
    Returns {k: θ at the start of epoch k} for every epoch run, plus the final θ under
    key epochs.stop: one checkpoint per epoch, never one per step."""
    epochs = epochs if epochs is not None else range(schedule.epochs)
    checkpoints = {epochs.start: theta}
    first_loss = None
    for k in epochs:
        keep, labels = keep_at(k), labels_at(k) if labels_at else None
        for t in schedule.epoch_steps(k):
            idx = torch.as_tensor(schedule.batch(t), device=obj.x.device)
            lr = float(schedule.lr[t])
            theta, (ell, out) = sgd_step(obj, theta, idx, lr, keep, labels=labels)
            loss, acc = batch_stats(obj, idx, keep, ell, out, labels)
            first_loss = first_loss if first_loss is not None else loss
            if not math.isfinite(loss) or loss > 100 * max(first_loss, 1.0):
                raise Diverged(t, loss, lr)
            if on_step:
                on_step(StepStats(t, k, loss, acc))
        checkpoints[k + 1] = theta
        if on_epoch:
            on_epoch(k, theta)
    return checkpoints


def checkpoint_every(steps: int) -> int:
    """⌈√T_k⌉ for an epoch of T_k steps: keeping every ⌈√T_k⌉-th θ and the segment being read
    holds about 2√T_k θ instead of T_k (the classic checkpointing trade)."""
    return math.isqrt(steps - 1) + 1 if steps > 1 else 1


def replayed_steps(steps: int, every: int | None = None) -> int:
    """SGD steps an EpochReplay of `steps` steps takes when read backwards once (as retrace
    reads it): T_k − 1 to reach its end, keeping every `every`-th θ, plus every − 1 to recompute
    each segment but the last, which is still held. About one extra replay for every = ⌈√T_k⌉."""
    every = every or checkpoint_every(steps)
    return steps - 1 + (math.ceil(steps / every) - 1) * (every - 1)


class EpochReplay:
    """θ[t] for every step t of epoch k (θ before each step, in order), regenerated from the
    epoch's checkpoint θ_k by the same code and inputs as training, so bit-identical on CPU.

    A sequence (len, [i], reversed, iter) that holds only every `every`-th θ (default ⌈√T_k⌉)
    and the one segment of θ last read: a segment is replayed from its nearest kept θ when it
    is read. Memory ∝ (T_k/every + every)·|θ| instead of T_k·|θ|; read backwards, it costs
    replayed_steps(T_k) SGD steps, about one replay more than keeping every θ. Read forwards
    (iter) it keeps nothing and costs T_k − 1 steps. on_step(t) after each replayed step
    (a recomputation is work too). `keep` and `labels`: the epoch's mask and labels, as in
    training. every = 1 keeps every θ (T_k of them, what the replay held before)."""

    def __init__(self, obj: Objective, schedule: Schedule, theta_k: Params, k: int,
                 keep: torch.Tensor, on_step: Callable[[int], None] | None = None,
                 labels: torch.Tensor | None = None, every: int | None = None):
        self.obj, self.schedule, self.keep, self.on_step = obj, schedule, keep, on_step
        self.labels = labels
        self.steps = schedule.epoch_steps(k)
        self.every = every or checkpoint_every(len(self.steps))
        self.kept = [theta_k]  # θ before the steps 0, every, 2·every, … of the epoch
        self.segment, self.segment_index = None, None  # the segment last read

    def __len__(self) -> int:
        return len(self.steps)

    def _step(self, theta: Params, i: int) -> Params:
        """θ before the epoch's step i + 1, from θ before its step i."""
        t = self.steps[i]
        idx = torch.as_tensor(self.schedule.batch(t), device=self.obj.x.device)
        theta = sgd_step(self.obj, theta, idx, float(self.schedule.lr[t]), self.keep,
                         labels=self.labels)[0]
        if self.on_step:
            self.on_step(t)
        return theta

    def _segment(self, s: int) -> list[Params]:
        """θ before the steps s·every … (s+1)·every − 1 (to the epoch's end), replayed from the
        kept θ of segment s; the kept θ up to it are replayed first when not yet known."""
        if self.segment_index != s:
            self.segment = self.segment_index = None  # freed before the replay
            while len(self.kept) <= s:
                theta, first = self.kept[-1], (len(self.kept) - 1) * self.every
                for i in range(first, first + self.every):
                    theta = self._step(theta, i)
                self.kept.append(theta)
            first = s * self.every
            segment = [self.kept[s]]
            for i in range(first, min(first + self.every, len(self)) - 1):
                segment.append(self._step(segment[-1], i))
            self.segment, self.segment_index = segment, s
        return self.segment

    def __getitem__(self, i: int) -> Params:
        if not -len(self) <= i < len(self):
            raise IndexError(f"step {i} of an epoch of {len(self)} steps")
        s, r = divmod(i % len(self), self.every)
        return self._segment(s)[r]

    def __reversed__(self):
        for s in reversed(range(math.ceil(len(self) / self.every))):
            yield from reversed(self._segment(s))

    def __iter__(self):
        theta = self.kept[0]
        for i in range(len(self)):
            if i:
                theta = self._step(theta, i - 1)
            yield theta


def replay_epoch(obj: Objective, schedule: Schedule, theta_k: Params, k: int,
                 keep: torch.Tensor, on_step: Callable[[int], None] | None = None,
                 labels: torch.Tensor | None = None, every: int | None = None
                 ) -> EpochReplay:
    """θ[t] for every step t of epoch k from the epoch's checkpoint (θ before each step, in
    order), as an EpochReplay: every ⌈√T_k⌉-th θ kept, the steps between recomputed when read.
    Same code and inputs as training (the epoch's mask `keep` and `labels`), so bit-identical on
    CPU. on_step(t) after each replayed step. every = 1 keeps every θ."""
    return EpochReplay(obj, schedule, theta_k, k, keep, on_step, labels, every)


def counterfactual_sgd(obj: Objective, schedule: Schedule, theta: Params,
                       keeps: torch.Tensor | Callable[[int], torch.Tensor],
                       epochs: range | None = None,
                       on_step: Callable[[int], None] | None = None,
                       weights: Callable = batch_weights,
                       labels: torch.Tensor | Callable[[int], torch.Tensor] | None = None,
                       chunk_size: int | None = None, workers: int = 1,
                       beside: Callable[[], None] | None = None) -> Params:
    """Definition 2 for many removal sets at once: θ_{−S}[T] for every row of `keeps` (M × N
    boolean masks; or a function giving them for epoch k), by one SGD run vectorised over the
    masks with torch.func.vmap, from θ at the start of the first of `epochs`. `labels`: the
    labels each run uses (M × N, or a function giving them for epoch k; default the
    objective's y for all), so that counterfactuals with fixed labels run in the same vmap.
    on_step(t) is called after each step t (a progress report; raising from it stops the run).
    `weights`: how a batch weighs its kept instances (batch_weights: Definition 2;
    kept_mean_weights: SGD on the kept instances alone). `chunk_size`: vmap's, the masks
    computed together (None: all M; 1: one after the other, which is faster for convolutions
    on a CPU: costs.vmap_chunk measures it). `workers`: threads that each run a share of the
    masks (shares, in_parallel), with the same bits as one thread; `beside`: other work run at
    the same time (in_parallel). Returns parameters with a leading dimension M."""
    epochs = epochs if epochs is not None else range(schedule.epochs)
    keeps_at = keeps if callable(keeps) else (lambda k: keeps)
    m = keeps_at(epochs.start).shape[0]
    labels_at = labels if callable(labels) else (
        (lambda k: labels) if labels is not None else (lambda k: obj.y.expand(m, -1)))
    if (workers > 1 and m > 1) or beside is not None:
        return in_parallel(
            lambda rows, report: counterfactual_sgd(
                obj, schedule, theta, lambda k: keeps_at(k)[rows], epochs, report, weights,
                lambda k: labels_at(k)[rows], chunk_size),
            shares(m, workers, chunk_size), on_step, beside, workers)
    thetas = {k: v.expand(m, *v.shape).clone() for k, v in theta.items()}
    step_all = vmap(lambda th, keep, y, idx, lr: sgd_step(obj, th, idx, lr, keep, weights, y)[0],
                    in_dims=(0, 0, 0, None, None), chunk_size=chunk_size)
    for k in epochs:
        keep, y = keeps_at(k), labels_at(k)
        for t in schedule.epoch_steps(k):
            idx = torch.from_numpy(schedule.batch(t)).to(obj.x.device)
            thetas = step_all(thetas, keep, y, idx, float(schedule.lr[t]))
            if on_step:
                on_step(t)
    return thetas


def shares(m: int, workers: int, chunk_size: int | None = None) -> list[slice]:
    """The masks 0..m−1 cut into at most `workers` consecutive shares of about equal size, each
    a whole number of vmap chunks, so that every mask is computed in the same chunk whatever
    the number of workers: the same bits. Without a chunk size (one vmap over every mask), one
    share."""
    if not chunk_size:
        return [slice(0, m)]
    size = math.ceil(math.ceil(m / workers) / chunk_size) * chunk_size
    return [slice(start, min(start + size, m)) for start in range(0, m, size)]


class Stopped(RuntimeError):
    """A share of in_parallel stopped because another share failed or was stopped."""


def in_parallel(run_share: Callable[[slice, Callable | None], Params], rows: list[slice],
                on_step: Callable[[int], None] | None = None,
                beside: Callable[[], None] | None = None, workers: int = 1) -> Params:
    """run_share(rows, report) for every share of the masks in a thread of its own, the results
    concatenated along the masks. The first share reports its steps through on_step (the shares
    run the same steps); when any share raises (on_step may, to stop the run: cancelled), the
    others stop at their next step and its exception is raised here. Each thread computes with
    the caller's torch threads, on its own copy of the model (models.outputs); torch releases
    the GIL inside its operators, so the shares use as many CPU cores.
    `beside`: other work done at the same time (e.g. a recorded retraining beside its random
    controls): in a thread of its own when there are fewer shares than `workers`, else before the
    last share (shares are cut equal from the front: the last is the smallest), in its thread;
    with one worker, first. When it raises, the shares stop as above; a share's failure is
    raised once it has finished."""
    if beside is not None and len(rows) < workers:
        plan = [[beside]] + [[r] for r in rows]
    elif beside is not None:
        plan = [[r] for r in rows[:-1]] + [[beside, rows[-1]]]
    else:
        plan = [[r] for r in rows]
    if len(plan) == 1:
        if beside is not None:
            beside()
        return run_share(rows[0], on_step or (lambda t: None))
    failed, threads = threading.Event(), torch.get_num_threads()

    def report(first: bool):
        def after(t: int):
            if failed.is_set():
                raise Stopped()
            if first and on_step:
                on_step(t)
        return after

    def thread(parts: list) -> Params | None:
        torch.set_num_threads(threads)  # the caller's: the same sums, the same bits
        try:
            done = None
            for part in parts:
                done = run_share(part, report(part is rows[0])) if isinstance(part, slice) \
                    else part()
            return done
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(len(plan)) as pool:
        futures = [pool.submit(thread, parts) for parts in plan]
        wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, Stopped)]
    if errors:
        raise (real or errors)[0]
    parts = [f.result() for f, p in zip(futures, plan) if isinstance(p[-1], slice)]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
