"""Runs: recorded training, scoring, counterfactual retraining and the trust check, on a data set
with a split, saved in a run directory.

A run directory holds
    config.json              what was run (data set, split, model, SGD settings, removed ids,
                             fixed labels)
    checkpoints.safetensors  θ at the start of every epoch (K tensors sets)
    weights.safetensors      θ[T], the trained model
    schedule.safetensors     the batch order of every epoch and η_t of every step
    log.csv                  per-step training loss and accuracy, validation at epoch ends
    metrics.json             final numbers; written last, so its presence marks a complete run
    influence.csv            after `score`: sample_id,label,influence, most harmful first
It is written in a temporary sibling folder and renamed into place at the end: a crash never
leaves a half-written run that looks complete. Weights never go through pickle.
"""
from __future__ import annotations

import json
import math
import os
import time
import types
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, get_args, get_origin, get_type_hints

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scipy import stats

import datasets
from datasets import ImageSet
from datasets.core import cut
from datasets.storage import atomic_file, atomic_folder

from . import models
from .progress import Progress, ProgressFn
from .sgd import (Objective, Params, Schedule, SGDConfig, StepStats, counterfactual_sgd,
                  initial_params, make_schedule, per_sample_loss, predictions, replayed_steps,
                  run_sgd)
from .sgd_influence import (loss_gradient, refine_extremes, retrace, retrace_queries,
                            retrace_with_relabel, sample_loss_gradients)

FORMAT = "sgd-influence-run/1"
MIN_STEPS, MIN_EPOCHS, MAX_EPOCHS = 600, 20, 200  # the default epochs give at least MIN_STEPS
# SGD steps (small data sets need many epochs to learn anything)
LEARNED = 0.9  # a model learned if its validation loss is at most this share of chance's
RETRAIN_MODES = ("all", "last")  # counterfactual SGD from the first epoch, or the last only
# Where the chunks of Run.outcomes run: None = here, one after the other. A cluster backend may
# set a function (run, chunks, mode, exclude) → an iterable of each chunk's rows in order
# (outcome_rows(removals, mode, exclude, None, fixes) of each chunk's (removals, fixes)), or None
# to keep them here; influence itself never imports one.
EXECUTOR: Callable[["Run", list[tuple[list, list]], str, list[str]], Iterable[list[dict]] | None] \
    | None = None
MAX_EXPLAINED = 1000  # test images explained in one call (Run.explain)
EXPLAIN_CHUNK = 100  # queries carried through one replay (memory grows with it)


class RunError(ValueError):
    """A run that cannot be created, read or used; the message says what to do."""


@dataclass
class RunConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "auto"
    epochs: int | None = None  # None: enough for MIN_STEPS steps (default_epochs)
    batch_size: int = 64
    lr: float | None = None  # None: the preset's own learning rate
    lr_decay: str = "constant"
    l2: float = 0.0
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    selection_fraction: float = 0.5  # share of the validation images held out of the query, to
    # judge how many images to remove (influence.kcurve); 0: none, the whole validation part is
    # the query (runs saved before this setting existed read as 0)
    device: str = "auto"
    dtype: str = "float32"
    removed: dict[str, int] = field(default_factory=dict)  # sample id → first epoch without it
    fixes: dict[str, list[int]] = field(default_factory=dict)  # sample id → [class index of
    # its new label, first epoch with it]; the label is an index into the data set's classes
    parent: str | None = None
    fingerprint: str | None = None

    def sgd(self) -> SGDConfig:
        return SGDConfig(self.epochs, self.batch_size, self.lr, self.lr_decay, self.l2, self.seed)

    def validate(self, n_train: int | None = None) -> None:
        """The one check of a configuration: every value of its type, then in its range. Raises
        a RunError listing every problem with what to do."""
        hints = get_type_hints(RunConfig)
        wrong = [f.name for f in fields(self) if not of_type(getattr(self, f.name), hints[f.name])]
        problems = [f"{name} has the wrong type" for name in wrong]
        ok = lambda name: name not in wrong  # noqa: E731  (ranges only of well-typed values)
        if ok("epochs") and self.epochs is not None and not 1 <= self.epochs <= 1000:
            problems.append("epochs must be a whole number from 1 to 1000")
        if ok("batch_size") and self.batch_size < 1:
            problems.append("batch size must be a whole number of at least 1")
        elif ok("batch_size") and n_train is not None and self.batch_size > n_train:
            problems.append(f"batch size {self.batch_size} is larger than the {n_train} "
                            "training images")
        if ok("lr") and self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr <= 10):
            problems.append("learning rate must be above 0 and at most 10")
        if ok("selection_fraction") and not 0 <= self.selection_fraction <= 0.9:
            problems.append("selection share must be between 0 and 0.9 of the validation images")
        if ok("l2") and not (math.isfinite(self.l2) and 0 <= self.l2 <= 10):
            problems.append("L2 must be between 0 and 10")
        if ok("lr_decay") and self.lr_decay not in ("constant", "inv_sqrt"):
            problems.append("learning-rate decay must be 'constant' or 'inv_sqrt'")
        if ok("dtype") and self.dtype not in ("float32", "float64"):
            problems.append("dtype must be float32 or float64")
        if ok("device") and self.device not in ("auto", "cpu", "cuda"):
            problems.append("device must be auto, cpu or cuda")
        if ok("removed") and any(v < 0 for v in self.removed.values()):
            problems.append("removed must map sample ids to epochs from 0")
        if ok("fixes") and any(len(v) != 2 or min(v) < 0 for v in self.fixes.values()):
            problems.append("fixes must map sample ids to [class index, first epoch], both "
                            "from 0")
        if ok("removed") and ok("fixes") and self.removed.keys() & self.fixes.keys():
            both = sorted(self.removed.keys() & self.fixes.keys())
            problems.append(f"{len(both)} id(s) are both removed and fixed (e.g. {both[0]!r}): "
                            "an image is either removed or given a new label")
        if problems:
            raise RunError("; ".join(problems))


def default_epochs(n_train: int, batch_size: int) -> int:
    """Epochs that give at least MIN_STEPS SGD steps (MIN_EPOCHS to MAX_EPOCHS)."""
    per_epoch = math.ceil(n_train / batch_size)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / per_epoch))))


def selection_part(val: np.ndarray, labels: np.ndarray, fraction: float, seed: int
                   ) -> np.ndarray:
    """The positions of the selection part: `fraction` of the validation positions `val`,
    stratified by label where possible and drawn by the run's seed (datasets.core.cut); empty
    for fraction 0 or fewer than 2 validation images (at least one stays in the query)."""
    size = selection_size(len(val), fraction)
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(cut(np.asarray(val), labels, size, seed)[1])


def selection_size(n_val: int, fraction: float) -> int:
    """How many of n_val validation images the selection part holds (one at least, and at
    least one left for the query)."""
    return 0 if fraction == 0 or n_val < 2 else min(max(1, round(fraction * n_val)), n_val - 1)


def chance_loss(labels_train: np.ndarray, labels_val: np.ndarray, n_classes: int) -> float:
    """The validation loss of knowing nothing but the class frequencies of the training images:
    the cross-entropy of predicting those frequencies for every validation image."""
    counts = np.bincount(labels_train, minlength=n_classes) + 1.0  # (+1: no class is impossible)
    freq = counts / counts.sum()
    return float(-np.mean(np.log(freq[labels_val]))) if len(labels_val) else float("nan")


def learned(val_loss: float, chance: float) -> bool:
    """Did the model learn? Its validation loss must be clearly below that of chance."""
    return math.isfinite(val_loss) and math.isfinite(chance) and val_loss <= LEARNED * chance


def of_type(value, hint) -> bool:
    """Does a value (e.g. read from JSON) have the type a RunConfig field declares? bool is not
    a number here, and an int is a valid float."""
    if isinstance(hint, types.UnionType):
        return any(of_type(value, h) for h in get_args(hint))
    if get_origin(hint) is dict:
        key_type, value_type = get_args(hint)
        return isinstance(value, dict) and all(of_type(k, key_type) and of_type(v, value_type)
                                               for k, v in value.items())
    if get_origin(hint) is list:
        return isinstance(value, list) and all(of_type(v, get_args(hint)[0]) for v in value)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def device_of(name: str) -> torch.device:
    """CUDA when asked for or available ("auto"), else the CPU. On CUDA, deterministic cuDNN
    kernels keep replay as close to the recorded trajectory as the GPU allows."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device cuda was asked for but no CUDA GPU is available: use auto or cpu")
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                          "cpu" if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return device


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
        self.check_training_ids(self.config.removed)
        self.check_training_ids(self.config.fixes)
        self.check_fixed_labels(self.config.fixes)
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
        self._parts: dict[str, Objective] = {}  # validation and test inputs, built when needed

    def check_training_ids(self, ids) -> None:
        """RunError unless every id is a training instance of this run."""
        unknown = [sid for sid in ids if sid not in self.position]
        if unknown:
            known = set(self.data.ids)
            held_out = sum(sid in known for sid in unknown)
            raise RunError(
                f"{len(unknown)} id(s) are not training instances of this run: "
                + ", ".join(repr(sid) for sid in unknown[:3]) + (" …" if len(unknown) > 3 else "")
                + (f" ({held_out} of them are validation or test images)" if held_out else ""))

    def check_fixed_labels(self, fixes: dict[str, list[int]]) -> None:
        """RunError unless every fix names a class of the data set other than the image's
        given label."""
        n = len(self.data.classes)
        for sid, (label, _) in fixes.items():
            if label >= n:
                raise RunError(f"the fix of {sid!r} names class {label}, but the data set has "
                               f"{n} classes")
            if label == self.data.labels[self.split.train[self.position[sid]]]:
                raise RunError(f"the fix of {sid!r} gives it its own label "
                               f"{self.data.classes[label]!r}")

    def class_index(self, label: str | int) -> int:
        """A label as the index of its class: a str is a class name, an int a class index."""
        classes = self.data.classes
        if isinstance(label, str) and label in classes:
            return classes.index(label)
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) \
                and 0 <= label < len(classes):
            return int(label)
        shown = ", ".join(map(str, classes[:10])) + (" …" if len(classes) > 10 else "")
        raise RunError(f"unknown label {label!r}: the classes are {shown}")

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
        if not exclude:
            return lambda theta: per_sample_loss(obj.outputs(theta, obj.x), obj.y).mean()
        keep = torch.tensor([self.data.ids[i] not in exclude for i in self.split.val],
                            device=self.device)
        if not keep.any():
            raise RunError("every validation image is left out of the query: keep at least one")
        x, y = obj.x[keep], obj.y[keep]
        return lambda theta: per_sample_loss(obj.outputs(theta, x), y).mean()

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
                  on_progress: ProgressFn | None = None, refine: int = 0) -> np.ndarray:
        """L̂_{−j}(u) for every training position j, retracing every epoch (or the last one only:
        the paper's approximate version, Section 7.2). The query u defaults to the gradient of
        the mean validation loss at θ[T]; give a loss function of θ or a vector instead.
        refine: then re-score the `refine` most negative and most positive with the forward,
        first-order-exact estimate, which keeps the cross-epoch term (refine_extremes)."""
        if refine and last_epoch_only:
            raise RunError("the ends are refined after a retrace of every epoch")
        if refine and self.config.fixes:
            raise RunError("the refined ranking does not follow fixed labels yet: rank a run "
                           "without fixes, or use the exact ranking")
        u, epochs, report = self._retrace_setup(query, last_epoch_only, on_progress,
                                                self.schedule.steps if refine else 0)
        scores = retrace(self.objective, self.schedule, self.checkpoints, self.keep_at, u,
                         epochs, report, self.labels_at)
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
        u, epochs, report = self._retrace_setup(query, last_epoch_only, on_progress)
        scores, effects = retrace_with_relabel(self.objective, self.schedule, self.checkpoints,
                                               self.keep_at, u, epochs, len(self.data.classes),
                                               report, self.labels_at)
        effects = effects.cpu().double().numpy()
        effects[~self.keep_at(self.schedule.epochs - 1).cpu().numpy()] = np.nan
        return scores.cpu().double().numpy(), effects

    def _retrace_setup(self, query, last_epoch_only: bool, on_progress: ProgressFn | None,
                       more_steps: int = 0):
        """u, the epochs to retrace and the progress report of Algorithm 2 (and `more_steps`
        units of work after it)."""
        if not (query is None or callable(query) or isinstance(query, dict)):
            raise RunError("the query must be a loss function of θ or a parameter vector")
        if callable(query) or query is None:
            query = loss_gradient(query or self.val_loss_fn, self.theta)
        K = self.schedule.epochs
        epochs = range(K - 1, K) if last_epoch_only else range(K)
        total = self.retrace_steps(epochs) + more_steps
        done = iter(range(1, total + 1))
        report = (lambda t: on_progress(Progress("score", next(done), total))) \
            if on_progress else None
        return query, epochs, report

    def retrace_steps(self, epochs: range) -> int:
        """Units of progress of one retrace over `epochs`: the replayed steps (some twice:
        sgd.EpochReplay) and the retraced ones."""
        steps = self.schedule.steps_per_epoch
        return len(epochs) * (replayed_steps(steps) + steps)

    # --- why this mistake: SGD-influence on single test images -----------------------------
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

    def explain(self, test_ids: Iterable[str], last_epoch_only: bool = False,
                on_progress: ProgressFn | None = None, chunk: int = EXPLAIN_CHUNK) -> np.ndarray:
        """Q × N: L̂_{−j}(u_q) for every test image q of `test_ids` and training position j,
        u_q = ∇θ of q's loss at θ[T]: the estimated change of that test image's loss when j is
        removed (negative = removing j lowers it: j is harmful to q, e.g. pulled the model
        towards its wrong answer on a mistake). The queries go through one replay `chunk` at a
        time (retrace_queries)."""
        positions = self.test_positions(test_ids)
        if not 1 <= len(positions) <= MAX_EXPLAINED:
            raise RunError(f"explain 1 to {MAX_EXPLAINED} test images at a time, not "
                           f"{len(positions)}")
        K = self.schedule.epochs
        epochs = range(K - 1, K) if last_epoch_only else range(K)
        chunks = [positions[i:i + chunk] for i in range(0, len(positions), chunk)]
        total = len(chunks) * self.retrace_steps(epochs)
        done = iter(range(1, total + 1))
        report = (lambda t: on_progress(Progress("score", next(done), total))) \
            if on_progress else None
        test = self.part("test")
        rows = []
        for part in chunks:
            queries = Objective(self.model, test.x[part], test.y[part])
            us = sample_loss_gradients(queries, self.theta)
            rows.append(retrace_queries(self.objective, self.schedule, self.checkpoints,
                                        self.keep_at, us, epochs, report, self.labels_at))
        return torch.cat(rows).cpu().double().numpy()

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
    def new_fixes(self, fixes: Mapping[str, str | int], first: int, removing=()
                  ) -> dict[str, list[int]]:
        """Fixes (sample id → new label: a class name, or a class index) as config entries
        [class index, first epoch], checked: training images of this run, known labels, each
        different from the image's given label and from the label it has now, none removed
        (already, or in `removing`), and none fixed already from an earlier epoch than `first`
        (its labels could not be told apart)."""
        self.check_training_ids(fixes)
        removed = set(self.config.removed) | set(removing)
        current = self.objective.y.cpu().numpy()
        new = {}
        for sid, label in fixes.items():
            c = self.class_index(label)
            if sid in removed:
                raise RunError(f"{sid!r} is both removed and fixed: an image is either removed "
                               "or given a new label")
            position = self.position[sid]
            if c == self.data.labels[self.split.train[position]]:
                raise RunError(f"{self.data.classes[c]!r} is the given label of {sid!r}: a fix "
                               "must change its label")
            if c == current[position]:
                raise RunError(f"{sid!r} is labelled {self.data.classes[c]!r} already: a fix "
                               "must change its label")
            if sid in self.config.fixes and self.config.fixes[sid][1] < first:
                raise RunError(f"{sid!r} was fixed from epoch {self.config.fixes[sid][1] + 1} "
                               "already: fix it again from the first epoch (mode all)")
            new[sid] = [c, first]
        return new

    def without(self, remove_ids=(), mode: str = "all",
                fixes: Mapping[str, str | int] | None = None) -> "Run":
        """A new, untrained run: the same data, split, initialisation and batch order, with
        `remove_ids` skipped and the `fixes` (sample id → new label, see new_fixes) applied,
        both from the first epoch (mode all) or from the last (mode last)."""
        if mode not in RETRAIN_MODES:
            raise RunError(f"unknown mode {mode!r}: use all or last")
        remove_ids = list(dict.fromkeys(remove_ids))
        self.check_training_ids(remove_ids)
        first = 0 if mode == "all" else self.schedule.epochs - 1
        fixed = {**self.config.fixes, **self.new_fixes(fixes or {}, first, remove_ids)}
        removed = dict(self.config.removed)
        for sid in remove_ids:
            if sid in fixed:
                raise RunError(f"{sid!r} is both removed and fixed: an image is either removed "
                               "or given a new label")
            removed[sid] = min(removed.get(sid, first), first)
        config = RunConfig(**{**asdict(self.config), "removed": removed, "fixes": fixed,
                              "parent": str(self.path) if self.path else None})
        return Run(config, self.data)

    def retrain(self, remove_ids=(), mode: str = "all", on_progress: ProgressFn | None = None,
                fixes: Mapping[str, str | int] | None = None) -> "Run":
        """Counterfactual SGD without `remove_ids` and with the `fixes` (sample id → new label);
        mode last starts from the last epoch's checkpoint, so only that epoch is re-run."""
        child = self.without(remove_ids, mode, fixes)
        start = 0 if mode == "all" else self.schedule.epochs - 1
        child.train(on_progress, start=start, checkpoints=self.checkpoints)
        return child

    # --- many counterfactual retrainings at once ------------------------------------------
    def outcomes(self, removals: list[list[str]], mode: str = "all", exclude: Iterable[str] = (),
                 on_progress: ProgressFn | None = None, phase: str = "retrain",
                 chunk: int = 32, fixes: list[Mapping[str, str | int]] | None = None,
                 query: Callable[[Params], torch.Tensor] | None = None,
                 measure: Callable[[Params], Mapping] | None = None) -> pd.DataFrame:
        """Retrain without each set of ids (Definition 2; mode all: from the first epoch, last:
        the last epoch only), with the set's `fixes` (sample id → new label, one mapping per
        set, see new_fixes) from the same epoch, every set in one SGD run vectorised over the
        removal masks and label vectors (counterfactual_sgd, `chunk` sets at a time), and
        measure each retrained model. One row per set: query_loss (the mean loss over the
        validation images but the selection part and `exclude`: the query whose change the
        scores estimate), val_loss, val_error, selection_loss, selection_error (NaN without a
        selection part), test_loss, test_error. `query`: another query loss of θ (e.g. one
        test image's, test_loss_fn) instead of the validation one; `measure(θ)`: more columns
        of each row (a mapping).
        With an EXECUTOR set, more than one chunk and neither `query` nor `measure`, the chunks
        may run elsewhere (each chunk is computed the same way wherever it runs; progress then
        comes per chunk)."""
        if mode not in RETRAIN_MODES:
            raise RunError(f"unknown mode {mode!r}: use all or last")
        fixes = list(fixes) if fixes is not None else [{}] * len(removals)
        if len(fixes) != len(removals):
            raise RunError("give one set of fixes per set of removals")
        K = self.schedule.epochs
        first = 0 if mode == "all" else K - 1
        for ids in removals:
            self.check_training_ids(ids)
        fixes = [self.new_fixes(f, first, ids) for f, ids in zip(fixes, removals)]
        per_chunk = (K - first) * self.schedule.steps_per_epoch
        chunks = [(removals[start:start + chunk], fixes[start:start + chunk])
                  for start in range(0, len(removals), chunk)]
        total = len(chunks) * per_chunk
        done = iter(range(1, total + 1))
        report = (lambda t: on_progress(Progress(phase, next(done), total))) \
            if on_progress else None
        elsewhere = EXECUTOR(self, chunks, mode, list(exclude)) \
            if EXECUTOR is not None and len(chunks) > 1 \
            and query is None and measure is None else None
        rows = []
        if elsewhere is None:
            for part, fixed in chunks:
                rows += self.outcome_rows(part, mode, exclude, report, fixed, query, measure)
            return pd.DataFrame(rows)
        for k, part in enumerate(elsewhere, 1):
            rows += part
            if on_progress:
                on_progress(Progress(phase, k * per_chunk, total))
        return pd.DataFrame(rows)

    def outcome_rows(self, removals: list[list[str]], mode: str = "all",
                     exclude: Iterable[str] = (), on_step: Callable | None = None,
                     fixes: list[Mapping[str, list[int]]] | None = None,
                     query: Callable[[Params], torch.Tensor] | None = None,
                     measure: Callable[[Params], Mapping] | None = None) -> list[dict]:
        """One chunk of outcomes(): every set of ids, with its checked fixes (new_fixes: sample
        id → [class index, first epoch]), in one vectorised counterfactual SGD run."""
        K = self.schedule.epochs
        epochs = range(0, K) if mode == "all" else range(K - 1, K)
        query = query or self.query_loss(exclude)
        fixes = fixes if fixes is not None else [{}] * len(removals)
        gone = torch.zeros(len(removals), len(self.train_ids), dtype=torch.bool,
                           device=self.device)
        fixed = torch.full(gone.shape, -1, device=self.device)  # new label, or −1: none
        for m, (ids, fix) in enumerate(zip(removals, fixes)):
            gone[m, [self.position[sid] for sid in ids]] = True
            for sid, (c, _) in fix.items():
                fixed[m, self.position[sid]] = c
        theta0 = self.checkpoints[epochs.start]
        thetas = counterfactual_sgd(
            self.objective, self.schedule, theta0, lambda k: self.keep_at(k)[None] & ~gone,
            epochs, on_step,
            labels=lambda k: torch.where(fixed >= 0, fixed, self.labels_at(k)[None]))
        rows = []
        for m in range(len(gone)):
            theta = {name: p[m] for name, p in thetas.items()}
            with torch.no_grad():
                query_loss = float(query(theta))
            rows.append({"query_loss": query_loss,
                         **dict(zip(("val_loss", "val_error"), self.evaluate("val", theta))),
                         **dict(zip(("selection_loss", "selection_error"),
                                    self.evaluate("selection", theta))),
                         **dict(zip(("test_loss", "test_error"), self.evaluate("test", theta))),
                         **(measure(theta) if measure else {})})
        return rows

    # --- trust check ----------------------------------------------------------------------
    def check(self, ranked: pd.DataFrame, mode: str = "all", n: int = 10, groups: int = 20,
              group_share: float = 0.05, exclude: Iterable[str] = (), seed: int = 0,
              on_progress: ProgressFn | None = None,
              query: Callable[[Params], torch.Tensor] | None = None) -> dict:
        """Compare a ranking's estimated removal effects (`ranked`: sample_id, influence) with
        the real effect of removal on the query, retraining in `mode`:
        * singles: n instances spread evenly over the ranking (both ends), each removed alone:
          Kendall τ and sign agreement between estimate and truth;
        * groups: `groups` random groups of `group_share` of the training set; a group's
          estimate is the sum of its members' scores: Spearman correlation with the truth (the
          linear datamodeling score of TRAK, Park et al. 2023).
        `query`: the loss whose change the scores estimate, if not the validation loss (e.g. one
        test image's, test_loss_fn). All removals, plus an empty one as the reference, in one vectorised retraining."""
        if n < 2 or groups < 0 or not 0 < group_share <= 0.5:
            raise RunError("the trust check needs at least 2 single images, 0 or more groups "
                           "and a group share above 0 and at most 0.5")
        n = min(n, len(ranked))
        picked = ranked.iloc[np.unique(np.linspace(0, len(ranked) - 1, n).round().astype(int))]
        score = dict(zip(ranked.sample_id, ranked.influence))
        rng = np.random.default_rng(seed)
        size = max(1, round(group_share * len(ranked)))
        members = [list(rng.choice(ranked.sample_id.to_numpy(), size, replace=False))
                   for _ in range(groups)] if len(ranked) > size else []
        removals = [[]] + [[sid] for sid in picked.sample_id] + members
        losses = self.outcomes(removals, mode, exclude, on_progress, phase="check",
                               query=query).query_loss
        actual = (losses - losses[0]).to_numpy()[1:]  # change against the empty removal
        estimate = picked.influence.to_numpy()
        single, grouped = actual[:len(picked)], actual[len(picked):]
        tau = stats.kendalltau(estimate, single)
        result = {"n": len(picked), "tau": float(tau.statistic), "p_value": float(tau.pvalue),
                  "sign_agreement": float(np.mean(np.sign(estimate) == np.sign(single))),
                  "rows": pd.DataFrame({"sample_id": picked.sample_id.to_numpy(),
                                        "estimate": estimate, "actual": single}),
                  "groups": len(members), "group_size": size}
        if len(members) >= 3:
            predicted = np.array([sum(score[sid] for sid in group) for group in members])
            rho = stats.spearmanr(predicted, grouped)
            result.update(group_spearman=float(rho.statistic), group_p_value=float(rho.pvalue),
                          group_rows=pd.DataFrame({"estimate": predicted, "actual": grouped}))
        return result

    def predictions(self) -> pd.DataFrame:
        """sample_id, part, label, predicted, confidence for every image of the data set: the
        trained model's class and its probability, so that results can be shown and compared
        without loading a model (predictions.csv in the run folder)."""
        frames = []
        for part in ("train", "val", "test"):
            positions = getattr(self.split, part)
            if len(positions) == 0:
                continue
            prob = self.probabilities(part)
            frames.append(pd.DataFrame({
                "sample_id": [self.data.ids[i] for i in positions], "part": part,
                "label": (self.objective.y.cpu().numpy() if part == "train"
                          else self.data.labels[positions]), "predicted": prob.argmax(1),
                "confidence": prob.max(1)}))
        return pd.concat(frames, ignore_index=True)

    # --- storage --------------------------------------------------------------------------
    def save(self, out: str | os.PathLike, log: pd.DataFrame | None = None) -> Path:
        """Write the run directory atomically; refuses to overwrite an existing one."""
        out = Path(out)
        refuse_existing(out)
        K = self.schedule.epochs
        try:
            with atomic_folder(out) as tmp:
                (tmp / "config.json").write_text(
                    json.dumps({"format": FORMAT, **asdict(self.config)}, indent=2))
                save_file({f"epoch{k}/{name}": p.contiguous().cpu()
                           for k in range(K) for name, p in self.checkpoints[k].items()},
                          tmp / "checkpoints.safetensors")
                save_file({name: p.contiguous().cpu() for name, p in self.theta.items()},
                          tmp / "weights.safetensors")
                save_file({"order": torch.as_tensor(self.schedule.order, dtype=torch.int32),
                           "lr": torch.as_tensor(self.schedule.lr)}, tmp / "schedule.safetensors")
                if log is not None:
                    log.to_csv(tmp / "log.csv", index=False)
                self.predictions().to_csv(tmp / "predictions.csv", index=False)
                (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
        except OSError as e:
            raise RunError(f"cannot write the run to {out}: {e.strerror or e} "
                           "(check free disk space and write permission)") from None
        self.path = out
        return out


def load(path: str | os.PathLike, data: ImageSet | None = None) -> Run:
    """Reopen a saved run. Corrupt, foreign or incomplete run folders are refused clearly."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is not a run folder (no config.json)")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: config.json is damaged ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RunError(f"{path} was not written by this tool (unknown format)")
    if not (path / "metrics.json").is_file():
        raise RunError(f"{path} is incomplete (training was interrupted); train it again")
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: metrics.json is damaged ({e})") from None
    if not isinstance(metrics, dict):
        raise RunError(f"{path}: metrics.json is damaged (not a JSON object)")
    run = Run(config_from_json(raw, path), data)
    try:
        stored = load_file(path / "checkpoints.safetensors", device=str(run.device))
        final = load_file(path / "weights.safetensors", device=str(run.device))
        schedule = load_file(path / "schedule.safetensors")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise RunError(f"{path}: a weights file is missing or damaged ({e})") from None
    expected = {name: p.shape for name, p in run.model.named_parameters()}
    K = run.schedule.epochs
    checkpoints = {}
    for k in range(K + 1):
        theta = {name: (final.get(name) if k == K else stored.get(f"epoch{k}/{name}"))
                 for name in expected}  # in the model's parameter order
        if set(theta) != set(expected) or any(
                theta[n] is None or theta[n].shape != s or theta[n].dtype != run.dtype
                for n, s in expected.items()):
            raise RunError(f"{path}: the weights do not fit the {run.preset.name} model of this "
                           "run")
        checkpoints[k] = theta
    order = schedule.get("order")
    if order is None or not np.array_equal(order.numpy(), run.schedule.order):
        raise RunError(f"{path}: the stored batch order does not match the run's config")
    run.checkpoints, run.metrics, run.path = checkpoints, metrics, path
    return run


def config_from_json(raw: dict, path: Path) -> RunConfig:
    """A RunConfig from a run folder's config.json, checked by RunConfig.validate (a tampered
    file is refused here, not deep inside training or scoring)."""
    config = RunConfig(**{f.name: raw[f.name] for f in fields(RunConfig) if f.name in raw})
    if "selection_fraction" not in raw:  # saved before the selection part: the whole
        config.selection_fraction = 0.0  # validation part stayed the query
    try:
        config.validate()
    except RunError as e:
        raise RunError(f"{path}: config.json is damaged ({e})") from None
    return config


class TrainingLog:
    """A progress callback that keeps the training log: one row per step, with validation loss
    and accuracy on each epoch's last row. Chains to another callback."""

    def __init__(self, then: ProgressFn | None = None):
        self.rows: list[dict] = []
        self.then = then

    def __call__(self, p: Progress) -> None:
        if p.step is not None:
            s = p.step
            self.rows.append({"step": s.step + 1, "epoch": s.epoch + 1, "loss": s.loss,
                              "accuracy": s.accuracy})
        if p.val is not None and self.rows:
            self.rows[-1].update(val_loss=p.val["val_loss"], val_accuracy=p.val["val_accuracy"])
        if self.then:
            self.then(p)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "epoch", "loss", "accuracy", "val_loss",
                                                "val_accuracy"])


def refuse_existing(out: str | os.PathLike) -> None:
    if Path(out).exists():
        raise RunError(f"{out} already exists; choose another output folder")


def train_new(config: RunConfig, out: str | os.PathLike, data: ImageSet | None = None,
              on_progress: ProgressFn | None = None, notes: dict | None = None) -> Run:
    """Train a new recorded run and save it to `out` (which must not exist yet); `notes` are
    kept with its metrics (e.g. how its learning rate was chosen)."""
    refuse_existing(out)
    run = Run(config, data)
    log = TrainingLog(on_progress)
    run.train(log)
    run.metrics.update(notes or {})
    run.save(out, log.frame())
    return run


def retrain_saved(run: Run, remove_ids, mode: str, out: str | os.PathLike,
                  on_progress: ProgressFn | None = None,
                  fixes: Mapping[str, str | int] | None = None) -> Run:
    """Counterfactual retraining of a saved run without `remove_ids` and with `fixes`, saved to
    `out`."""
    refuse_existing(out)
    log = TrainingLog(on_progress)
    child = run.retrain(remove_ids, mode, log, fixes)
    child.save(out, log.frame())
    return child


def write_csv(frame: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write a CSV atomically (see datasets.storage.atomic_file)."""
    out = Path(out)
    try:
        with atomic_file(out) as tmp:
            frame.to_csv(tmp, index=False)
    except OSError as e:
        raise RunError(f"cannot write {out}: {e.strerror or e} "
                       "(check free disk space and write permission)") from None
    return out


def read_csv(path: str | os.PathLike, text: tuple[str, ...] = (),
             numbers: tuple[str, ...] = (), optional_text: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table this tool wrote (predictions, influence scores, training log): the `text` columns
    (and `optional_text` ones where present) stay text ("07" must not become 7), the `numbers`
    columns must be numbers. A missing or damaged file is a RunError."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={c: str for c in (*text, *optional_text)})
    except (OSError, ValueError) as e:  # missing, unreadable, not CSV, not UTF-8
        raise RunError(f"the result file {path} is missing or damaged ({e}); compute it "
                       "again") from None
    missing = [c for c in (*text, *numbers) if c not in frame.columns]
    bad = [c for c in numbers if c in frame.columns and not (
        pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().all())]
    if missing or bad:
        what = f"no column {missing[0]!r}" if missing else f"column {bad[0]!r} is not all numbers"
        raise RunError(f"the result file {path} is damaged ({what}); compute it again")
    return frame

