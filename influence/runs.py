"""A run: a data set, its split and one recorded SGD schedule, with the model trained on it.

`Run` is what a notebook user holds: build one from a RunConfig (influence.config), train it
(Algorithm 1), score its training images (Algorithm 2, SGD-influence), and retrain it without
some images or with some labels fixed (counterfactual SGD, Definition 2). Saving and loading are
in influence.run_folder, the checked inputs of a retraining and many retrainings at once in
influence.counterfactual, the trust check in influence.trust, "why this mistake?" for test
images in influence.explain.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

import datasets
from datasets import ImageSet

from . import counterfactual, memory, models
from .config import RunConfig, RunError, default_epochs, device_of, selection_part, workers
from .counterfactual import Changes
from .progress import Progress, ProgressFn, counted
from .sgd import (Objective, Params, Schedule, StepStats, initial_params, make_schedule,
                  per_sample_loss, predictions, replayed_steps, run_sgd)
from .sgd_influence import (CURVATURE_PASSES, loss_gradient, refine_extremes, retrace,
                            retrace_with_relabel)

LEARNED = 0.9  # a model learned if its validation loss is at most this share of chance's


def chance_loss(labels_train: np.ndarray, labels_val: np.ndarray, n_classes: int) -> float:
    """The validation loss of knowing nothing but the class frequencies of the training images:
    the cross-entropy of predicting those frequencies for every validation image."""
    counts = np.bincount(labels_train, minlength=n_classes) + 1.0  # (+1: no class is impossible)
    freq = counts / counts.sum()
    return float(-np.mean(np.log(freq[labels_val]))) if len(labels_val) else float("nan")


def learned(val_loss: float, chance: float) -> bool:
    """Did the model learn? Its validation loss must be clearly below that of chance."""
    return math.isfinite(val_loss) and math.isfinite(chance) and val_loss <= LEARNED * chance


def as_inputs(images: np.ndarray, device, dtype) -> torch.Tensor:
    """uint8 N×H×W×C → float N×C×H×W in [0, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).to(device=device, dtype=dtype) / 255


class Run:
    """A data set, its split and one recorded SGD schedule, with the checkpoints of a trained run
    (or none yet). All training, scoring and retraining go through here.

    `config` is never changed: `run.config` is a resolved copy (the data's fingerprint, the
    preset's learning rate and the default epochs when none were given)."""

    def __init__(self, config: RunConfig, data: ImageSet | None = None):
        config.validate()  # types and ranges first: nothing below reads an unchecked value
        self.data = data if data is not None else datasets.load(config.dataset, config.data_dir)
        fingerprint = self.data.fingerprint()
        if config.fingerprint and config.fingerprint != fingerprint:
            raise RunError(f"the data set {config.dataset!r} has changed since this run was "
                           "trained; train a new run on it")
        self.split = self.data.split(config.val_fraction, config.test_fraction, config.seed)
        self.selection = selection_part(self.split.val, self.data.split_labels(),
                                        config.selection_fraction, config.seed)
        self.selection_ids = frozenset(self.data.ids[i] for i in self.selection)
        try:
            self.preset, self.preset_reason = models.resolve(config.model, self.data.shape)
        except ValueError as e:
            raise RunError(str(e)) from None
        epochs = config.epochs or default_epochs(len(self.split.train), config.batch_size)
        self.config = replace(config, fingerprint=fingerprint, epochs=epochs,
                              lr=self.preset.lr if config.lr is None else config.lr)
        self.config.validate(len(self.split.train))
        self.train_ids = [self.data.ids[i] for i in self.split.train]
        self.position = {sid: j for j, sid in enumerate(self.train_ids)}
        counterfactual.check_config_changes(self)
        self.device, self.dtype = device_of(self.config.device), getattr(torch, self.config.dtype)
        self.model = models.build(self.preset.name, self.data.shape, len(self.data.classes),
                                  self.config.seed)
        self.model.to(self.device, self.dtype)
        self.objective = self._objective(self.split.train, self.config.l2,
                                         self.labels_at(self.config.epochs - 1))
        self.schedule: Schedule = make_schedule(len(self.split.train), self.config.sgd())
        self.checkpoints: dict[int, Params] = {}
        self.metrics: dict = {}
        self.path: Path | None = None
        self.outcome_executor: counterfactual.OutcomeExecutor | None = None  # where the
        # chunks of counterfactual.outcomes of this run go; None: here, one after the other
        self._parts: dict[str, Objective] = {}  # validation and test inputs, built when needed

    def labels_at(self, k: int) -> torch.Tensor:
        """The label of every training position in epoch k: the given labels, with those
        fixed from an epoch ≤ k changed to their new label."""
        labels = torch.as_tensor(self.data.labels[self.split.train], device=self.device)
        changed = [(self.position[sid], c) for sid, (c, first) in self.config.fixes.items()
                   if first <= k]
        if changed:
            positions, new = zip(*changed)
            labels = labels.clone()
            labels[list(positions)] = torch.as_tensor(new, device=self.device)
        return labels

    def _objective(self, positions: np.ndarray, l2: float = 0.0,
                   labels: torch.Tensor | None = None) -> Objective:
        x = as_inputs(self.data.images[positions], self.device, self.dtype)
        y = torch.as_tensor(self.data.labels[positions], device=self.device) \
            if labels is None else labels
        return Objective(self.model, x, y, l2)

    def keep_at(self, k: int) -> torch.Tensor:
        """Training positions used in epoch k: all but those removed from an epoch ≤ k."""
        keep = torch.ones(len(self.train_ids), dtype=torch.bool, device=self.device)
        gone = [self.position[sid] for sid, first in self.config.removed.items() if first <= k]
        keep[gone] = False
        return keep

    @property
    def theta(self) -> Params:
        """θ[T], the trained parameters."""
        return self.checkpoints[self.schedule.epochs]

    # --- evaluation -----------------------------------------------------------------------
    def part(self, name: str) -> Objective:
        positions = {"train": self.split.train, "val": self.split.val, "test": self.split.test,
                     "selection": self.selection}
        if name not in positions:
            raise RunError(f"unknown part {name!r}")
        if name not in self._parts:  # training images: the labels in use in the last epoch
            self._parts[name] = self._objective(
                positions[name], labels=self.objective.y if name == "train" else None)
        return self._parts[name]

    def outputs(self, name: str, theta: Params | None = None) -> torch.Tensor:
        obj, theta = self.part(name), theta or self.theta
        with torch.no_grad():
            return torch.cat([obj.outputs(theta, xb) for xb in obj.x.split(1024)]) \
                if len(obj.x) else torch.zeros(0, models.n_outputs(len(self.data.classes)))

    def probabilities(self, name: str, theta: Params | None = None) -> np.ndarray:
        """Class probabilities, N × classes."""
        out = self.outputs(name, theta).double()
        if out.shape[-1] == 1:
            p1 = torch.sigmoid(out[:, 0])
            out = torch.stack([1 - p1, p1], 1)
        else:
            out = out.softmax(-1)
        return out.cpu().numpy()

    def evaluate(self, name: str, theta: Params | None = None) -> tuple[float, float]:
        """Mean loss and misclassification rate on a part (NaN for an empty part)."""
        obj = self.part(name)
        if len(obj.y) == 0:
            return float("nan"), float("nan")
        out = self.outputs(name, theta)
        loss = float(per_sample_loss(out, obj.y).mean())
        error = float((predictions(out) != obj.y).double().mean())
        return loss, error

    def correct(self, name: str, theta: Params | None = None) -> np.ndarray:
        """Per image of a part: is the model's prediction its label?"""
        return (predictions(self.outputs(name, theta)) == self.part(name).y).cpu().numpy()

    def val_loss_fn(self, theta: Params) -> torch.Tensor:
        """The default query of Algorithm 2 as a function of θ: the mean loss over the
        validation images outside the selection part (query_loss())."""
        return self.query_loss()(theta)

    def query_loss(self, exclude: Iterable[str] = ()) -> Callable[[Params], torch.Tensor]:
        """The query of Algorithm 2 as a function of θ: the mean loss over the validation
        images, leaving out the selection part (which judges how many to remove, and must not
        define what "harmful" means) and the sample ids in `exclude` (e.g. images whose label
        looks wrong)."""
        exclude = set(exclude) | self.selection_ids
        obj = self.part("val")
        x, y = obj.x, obj.y
        if exclude:
            keep = torch.tensor([self.data.ids[i] not in exclude for i in self.split.val],
                                device=self.device)
            if not keep.any():
                raise RunError("every validation image is left out of the query: keep at "
                               "least one")
            x, y = obj.x[keep], obj.y[keep]
        chunk = memory.images_per_chunk(self.model, x, self.memory_budget()) if len(x) else 1
        return memory.MeanLoss(obj.outputs, per_sample_loss, x, y, chunk)

    def memory_budget(self) -> int:
        """Bytes scoring may hold (influence.memory.budget_bytes of the config's memory_mb)."""
        return memory.budget_bytes(self.config.memory_mb)

    def replay_every(self) -> int:
        """The epoch replay keeps every `replay_every()`-th θ: 1 when an epoch's θ fit in the
        memory budget, else ⌈√T_k⌉ (influence.memory.replay_every); the same bits either way."""
        theta = dict(self.model.named_parameters())
        return memory.replay_every(self.schedule.steps_per_epoch, theta, self.memory_budget())

    def replay_ahead(self) -> bool:
        """Whether the retrace replays each epoch in a thread while it retraces the epoch after
        it (influence.memory.replay_ahead: a second core and two epochs of θ in the budget);
        every θ is kept then. The same bits either way."""
        theta = dict(self.model.named_parameters())
        return memory.replay_ahead(self.schedule.steps_per_epoch, theta, self.memory_budget(),
                                   workers(self.device))

    # --- training (Algorithm 1) -----------------------------------------------------------
    def train(self, on_progress: ProgressFn | None = None, start: int = 0,
              checkpoints: dict[int, Params] | None = None) -> dict:
        """Run the recorded SGD from epoch `start` (θ given by `checkpoints[start]`, or the
        seeded initialisation) to the end. Fills checkpoints and metrics."""
        begun = time.perf_counter()
        theta0 = (checkpoints or {}).get(start) or initial_params(self.model, self.device,
                                                                   self.dtype)
        epochs = range(start, self.schedule.epochs)
        total = len(epochs) * self.schedule.steps_per_epoch
        first_step = epochs.start * self.schedule.steps_per_epoch

        def on_step(s: StepStats):
            on_progress(Progress("train", s.step - first_step + 1, total, step=s))

        def on_epoch(k: int, theta: Params):
            done = (k + 1 - epochs.start) * self.schedule.steps_per_epoch
            on_progress(Progress("train", done, total, val=self._val_summary(theta, k)))

        result = run_sgd(self.objective, self.schedule, theta0, self.keep_at, epochs,
                         on_step if on_progress else None, on_epoch if on_progress else None,
                         self.labels_at)
        self.checkpoints = {**{k: v for k, v in (checkpoints or {}).items() if k < start},
                            **result}
        val_loss, val_error = self.evaluate("val")
        test_loss, test_error = self.evaluate("test")
        chance = chance_loss(self.objective.y.cpu().numpy(), self.data.labels[self.split.val],
                             len(self.data.classes))
        self.metrics = {
            "train_size": int(self.keep_at(self.schedule.epochs - 1).sum()),
            "val_loss": val_loss, "val_error": val_error, "chance_loss": chance,
            "learned": learned(val_loss, chance),
            "test_loss": test_loss, "test_error": test_error,
            "epochs": self.schedule.epochs, "steps": self.schedule.steps,
            "model": self.preset.name, "device": str(self.device),
            "seconds": round(time.perf_counter() - begun, 3),
        }
        return self.metrics

    def _val_summary(self, theta: Params, epoch: int) -> dict:
        loss, error = self.evaluate("val", theta)
        return {"epoch": epoch, "val_loss": loss, "val_accuracy": 1 - error}

    # --- SGD-influence (Algorithm 2) ------------------------------------------------------
    def influence(self, query: Params | Callable | None = None, last_epoch_only: bool = False,
                  on_progress: ProgressFn | None = None, refine: int = 0, damping: float = 0.0,
                  curvature: str = "hessian") -> np.ndarray:
        """L̂_{−j}(u) for every training position j, retracing every epoch (or the last one only:
        the paper's approximate version, Section 7.2). The query u defaults to the gradient of
        the mean validation loss at θ[T]; give a loss function of θ or a vector instead.
        refine: then re-score the `refine` most negative and most positive with the forward,
        first-order-exact estimate, which keeps the cross-epoch term (refine_extremes).
        damping λ ≥ 0 and curvature ("hessian" or "gauss-newton"): the retrace variants of
        influence/horizon.py (retrace's options)."""
        if refine and last_epoch_only:
            raise RunError("the ends are refined after a retrace of every epoch")
        if refine and (damping or curvature != "hessian"):
            raise RunError("the ends are refined after the exact retrace")
        if not damping >= 0:
            raise RunError(f"the damping must be 0 or more, not {damping}")
        if curvature not in CURVATURE_PASSES:
            raise RunError(f"unknown curvature {curvature!r}: use one of "
                           f"{', '.join(CURVATURE_PASSES)}")
        if refine and self.config.fixes:
            raise RunError("the refined ranking does not follow fixed labels yet: rank a run "
                           "without fixes, or use the exact ranking")
        every = self.replay_every()
        u, epochs, report = self._retrace_setup(query, last_epoch_only, on_progress,
                                                self.schedule.steps if refine else 0, every)
        scores = retrace(self.objective, self.schedule, self.checkpoints, self.keep_at, u,
                         epochs, report, self.labels_at, every, damping=damping,
                         curvature=curvature, ahead=self.replay_ahead())
        if refine:
            scores = refine_extremes(self.objective, self.schedule, self.checkpoints,
                                     self.keep_at, u, scores, refine, report)
        return scores.cpu().double().numpy()

    def relabel_influence(self, query: Params | Callable | None = None,
                          last_epoch_only: bool = False, on_progress: ProgressFn | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        """The removal scores L̂_{−j}(u) of `influence` and, from the same retrace, the relabel
        effects L̂_{j→c}(u): N × classes, the estimated change of the query loss if training
        position j had label c (negative = that label lowers it). 0 at the label in use; NaN
        rows for the instances no longer in use (removed), which cannot be relabelled. Label c
        means label c in every retraced epoch: an image fixed from the last epoch only, retraced
        over all epochs, has a non-zero effect for its new label too (its given label in the
        earlier epochs changes)."""
        every = self.replay_every()
        u, epochs, report = self._retrace_setup(query, last_epoch_only, on_progress, 0, every)
        scores, effects = retrace_with_relabel(self.objective, self.schedule, self.checkpoints,
                                               self.keep_at, u, epochs, len(self.data.classes),
                                               report, self.labels_at, every,
                                               self.replay_ahead())
        effects = effects.cpu().double().numpy()
        effects[~self.keep_at(self.schedule.epochs - 1).cpu().numpy()] = np.nan
        return scores.cpu().double().numpy(), effects

    def _retrace_setup(self, query, last_epoch_only: bool, on_progress: ProgressFn | None,
                       more_steps: int = 0, every: int | None = None):
        """u, the epochs to retrace and the progress report of Algorithm 2 (and `more_steps`
        units of work after it). A mean loss over images (query_loss, the default) gives its
        gradient chunk by chunk."""
        if not (query is None or callable(query) or isinstance(query, dict)):
            raise RunError("the query must be a loss function of θ or a parameter vector")
        query = self.query_loss() if query is None else query
        if isinstance(query, memory.MeanLoss):
            query = query.gradient(self.theta)
        elif callable(query):
            query = loss_gradient(query, self.theta)
        K = self.schedule.epochs
        epochs = range(K - 1, K) if last_epoch_only else range(K)
        total = self.retrace_steps(epochs, every) + more_steps
        return query, epochs, counted(on_progress, "score", total)

    def retrace_steps(self, epochs: range, every: int | None = None) -> int:
        """Units of progress of one retrace over `epochs`: the replayed steps (some twice when
        the replay keeps every `every`-th θ, default replay_every(): sgd.EpochReplay) and the
        retraced ones."""
        steps = self.schedule.steps_per_epoch
        return len(epochs) * (replayed_steps(steps, every or self.replay_every()) + steps)

    # --- single test images: the queries of "why this mistake?" (influence.explain) --------
    def test_positions(self, test_ids: Iterable[str]) -> np.ndarray:
        """Positions within the test part of the given sample ids; RunError naming the first id
        that is not a test image of this run (unknown, training or validation)."""
        test_ids = list(test_ids)
        where = {self.data.ids[i]: q for q, i in enumerate(self.split.test)}
        parts = {self.data.ids[i]: part for part in ("train", "val")
                 for i in getattr(self.split, part)}
        for sid in test_ids:
            if sid not in where:
                part = {"train": "a training image", "val": "a validation image"}.get(
                    parts.get(sid), "not an image of this data set")
                raise RunError(f"{sid!r} is {part}: give the ids of test images")
        return np.array([where[sid] for sid in test_ids], dtype=np.int64)

    def test_loss_fn(self, sample_id: str) -> Callable[[Params], torch.Tensor]:
        """The loss of one test image as a function of θ: the query of "why this mistake?"."""
        obj, q = self.part("test"), int(self.test_positions([sample_id])[0])
        x, y = obj.x[q:q + 1], obj.y[q:q + 1]
        return lambda theta: per_sample_loss(obj.outputs(theta, x), y)[0]

    def ranking(self, scores: np.ndarray | pd.DataFrame) -> pd.DataFrame:
        """One score per training position (or a frame of them, column "influence" and extra
        columns) as a table of the instances still in use, lowest (most harmful) first."""
        labels = self.objective.y.cpu().numpy()  # the labels in use (fixed ones included)
        frame = pd.DataFrame({"sample_id": self.train_ids,
                              "label": [self.data.classes[c] for c in labels]})
        if isinstance(scores, pd.DataFrame):
            frame = pd.concat([frame, scores.reset_index(drop=True)], axis=1)
        else:
            frame["influence"] = scores
        frame = frame[~frame.sample_id.isin(self.config.removed)]
        return frame.sort_values("influence", kind="stable").reset_index(drop=True)

    # --- counterfactual retraining (Definition 2) -----------------------------------------
    def without(self, changes: Changes) -> "Run":
        """A new, untrained run: the same data, split, initialisation and batch order, with the
        checked `changes` (counterfactual.changes) from their first epoch."""
        removed = dict(self.config.removed)
        for sid in changes.removed:
            removed[sid] = min(removed.get(sid, changes.first), changes.first)
        config = RunConfig(**{**asdict(self.config), "removed": removed,
                              "fixes": {**self.config.fixes, **changes.fixes},
                              "parent": str(self.path) if self.path else None})
        return Run(config, self.data)

    def retrain(self, remove_ids=(), mode: str = "all", on_progress: ProgressFn | None = None,
                fixes: Mapping[str, str | int] | None = None) -> "Run":
        """Counterfactual SGD without `remove_ids` and with the `fixes` (sample id → new label:
        a class name or index), checked by counterfactual.changes; mode last starts from the
        last epoch's checkpoint, so only that epoch is re-run."""
        return self.apply(counterfactual.changes(self, remove_ids, mode, fixes), on_progress)

    def apply(self, changes: Changes, on_progress: ProgressFn | None = None) -> "Run":
        """Counterfactual SGD with checked `changes` (counterfactual.changes), from their first
        epoch."""
        child = self.without(changes)
        child.train(on_progress, start=changes.first, checkpoints=self.checkpoints)
        return child
