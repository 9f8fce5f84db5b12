"""A run's configuration: every setting of a recorded SGD run, and the one check of them.

RunConfig is what a run folder's config.json holds and what the command line and the app set;
RunConfig.validate checks every value's type and range at once, and Run checks a configuration
with it before reading any value.
"""
from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass, field, fields
from typing import get_args, get_origin, get_type_hints

import numpy as np
import torch

from datasets.core import cut

from .sgd import SGDConfig

MIN_STEPS, MIN_EPOCHS, MAX_EPOCHS = 600, 20, 200  # the default epochs give at least MIN_STEPS
# SGD steps (small data sets need many epochs to learn anything)
RETRAIN_MODES = ("all", "last")  # counterfactual SGD from the first epoch, or the last only


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
    memory_mb: int | None = None  # memory budget of scoring in MB (influence.memory): every θ
    # of an epoch is kept when they fit, else ⌈√T_k⌉; None: $INFLUENCE_MEMORY_BUDGET_MB, else
    # half the free memory. The scores are the same bits either way
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
        if ok("memory_mb") and self.memory_mb is not None and self.memory_mb < 1:
            problems.append("memory budget must be at least 1 MB (or none: from the free "
                            "memory)")
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


def check_mode(mode: str) -> None:
    """RunError unless `mode` is a retraining mode (RETRAIN_MODES)."""
    if mode not in RETRAIN_MODES:
        raise RunError(f"unknown mode {mode!r}: use all or last")


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


def workers(device: torch.device) -> int:
    """Threads that share the masks of a counterfactual SGD run (sgd.in_parallel), each with
    torch's threads per operator: $INFLUENCE_WORKERS, else the CPU cores this process may use
    divided by torch's threads (a laptop's cores all work on the trust check, the controls and
    the label check); 1 on a GPU, which one vmap over every mask keeps busy."""
    if device.type != "cpu":
        return 1
    if os.environ.get("INFLUENCE_WORKERS"):
        try:
            return max(1, int(os.environ["INFLUENCE_WORKERS"]))
        except ValueError:
            raise RunError("INFLUENCE_WORKERS must be a whole number of threads, not "
                           f"{os.environ['INFLUENCE_WORKERS']!r}") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1  # macOS and Windows have no affinity: every core
    return max(1, cores // torch.get_num_threads())
