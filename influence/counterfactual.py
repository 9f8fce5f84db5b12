"""Counterfactual retraining (Definition 2): its inputs checked once, and many retrainings of
one run at once.

A retraining removes training images and may give others a new label (a fix), both from the
first epoch (mode all) or from the last one (mode last). `changes` is the one check of such
inputs; Run.retrain applies them. `outcomes` runs many sets of removals and fixes, each a removal
mask and a label vector of one counterfactual SGD run, in one SGD run vectorised over them
(counterfactual_sgd, torch.func.vmap), and measures each retrained model: the trust check, the
cleaning round's random controls and the k-curve are all outcomes of this kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from .config import RunError, check_mode, workers
from .progress import Progress, ProgressFn, counted
from .sgd import Params, counterfactual_sgd

if TYPE_CHECKING:
    from .runs import Run

# Where the chunks of `outcomes` run (Run.outcome_executor, set by whoever holds the run): None =
# here, one after the other; or a function (run, chunks, mode, exclude) → an iterable of each
# chunk's rows in order (outcome_rows of each chunk's (removals, fixes)), or None to keep them
# here. A cluster backend sets it on the runs it opens; influence itself never imports one.
OutcomeExecutor = Callable[["Run", list[tuple[list, list]], str, list[str]],
                           Iterable[list[dict]] | None]


# --- the inputs of a retraining, checked ---------------------------------------------------------
def check_training_ids(run: Run, ids) -> None:
    """RunError unless every id is a training instance of this run."""
    unknown = [sid for sid in ids if sid not in run.position]
    if unknown:
        known = set(run.data.ids)
        held_out = sum(sid in known for sid in unknown)
        raise RunError(
            f"{len(unknown)} id(s) are not training instances of this run: "
            + ", ".join(repr(sid) for sid in unknown[:3]) + (" …" if len(unknown) > 3 else "")
            + (f" ({held_out} of them are validation or test images)" if held_out else ""))


def class_index(run: Run, label: str | int) -> int:
    """A label as the index of its class: a str is a class name, an int a class index."""
    classes = run.data.classes
    if isinstance(label, str) and label in classes:
        return classes.index(label)
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) \
            and 0 <= label < len(classes):
        return int(label)
    shown = ", ".join(map(str, classes[:10])) + (" …" if len(classes) > 10 else "")
    raise RunError(f"unknown label {label!r}: the classes are {shown}")


def check_config_changes(run: Run) -> None:
    """RunError unless the images the run's config removes and fixes are training images of this
    run, and every fix names a class of the data set other than the image's given label."""
    check_training_ids(run, run.config.removed)
    check_training_ids(run, run.config.fixes)
    n = len(run.data.classes)
    for sid, (label, _) in run.config.fixes.items():
        if label >= n:
            raise RunError(f"the fix of {sid!r} names class {label}, but the data set has "
                           f"{n} classes")
        if label == run.data.labels[run.split.train[run.position[sid]]]:
            raise RunError(f"the fix of {sid!r} gives it its own label "
                           f"{run.data.classes[label]!r}")


def first_retrained(run: Run, mode: str) -> int:
    """The first epoch a retraining in `mode` re-runs: 0 (all) or the last one (last)."""
    check_mode(mode)
    return 0 if mode == "all" else run.schedule.epochs - 1


@dataclass(frozen=True)
class Changes:
    """The checked inputs of one counterfactual retraining (changes): the training images
    removed and the labels fixed (sample id → [class index, first epoch]), both from epoch
    `first` (0 in mode all, the last epoch in mode last)."""
    removed: tuple[str, ...]
    fixes: dict[str, list[int]]
    first: int


def changes(run: Run, remove_ids: Iterable[str] = (), mode: str = "all",
            fixes: Mapping[str, str | int] | None = None) -> Changes:
    """The one check of a retraining's inputs: a known mode, `remove_ids` (de-duplicated)
    training images of this run without a fixed label, and `fixes` (sample id → new label: a
    class name or index) checked by checked_fixes."""
    first = first_retrained(run, mode)
    remove_ids = tuple(dict.fromkeys(remove_ids))
    check_training_ids(run, remove_ids)
    fixed = checked_fixes(run, fixes or {}, first, remove_ids)
    both = [sid for sid in remove_ids if sid in run.config.fixes]
    if both:
        raise RunError(f"{both[0]!r} is both removed and fixed: an image is either removed or "
                       "given a new label")
    return Changes(remove_ids, fixed, first)


def checked_fixes(run: Run, fixes: Mapping[str, str | int], first: int, removing=()
                  ) -> dict[str, list[int]]:
    """Fixes (sample id → new label: a class name, or a class index) as config entries
    [class index, first epoch], checked: training images of this run, known labels, each
    different from the image's given label and from the label it has now, none removed
    (already, or in `removing`), and none fixed already from an earlier epoch than `first`
    (its labels could not be told apart)."""
    check_training_ids(run, fixes)
    removed = set(run.config.removed) | set(removing)
    current = run.objective.y.cpu().numpy()
    new = {}
    for sid, label in fixes.items():
        c = class_index(run, label)
        if sid in removed:
            raise RunError(f"{sid!r} is both removed and fixed: an image is either removed "
                           "or given a new label")
        position = run.position[sid]
        if c == run.data.labels[run.split.train[position]]:
            raise RunError(f"{run.data.classes[c]!r} is the given label of {sid!r}: a fix "
                           "must change its label")
        if c == current[position]:
            raise RunError(f"{sid!r} is labelled {run.data.classes[c]!r} already: a fix "
                           "must change its label")
        if sid in run.config.fixes and run.config.fixes[sid][1] < first:
            raise RunError(f"{sid!r} was fixed from epoch {run.config.fixes[sid][1] + 1} "
                           "already: fix it again from the first epoch (mode all)")
        new[sid] = [c, first]
    return new


# --- many retrainings at once ------------------------------------------------------------------
def outcomes(run: Run, removals: list[list[str]], mode: str = "all", exclude: Iterable[str] = (),
             on_progress: ProgressFn | None = None, phase: str = "retrain",
             chunk: int = 32, fixes: list[Mapping[str, str | int]] | None = None,
             query: Callable[[Params], torch.Tensor] | None = None,
             measure: Callable[[Params], Mapping] | None = None,
             beside: Callable[[], None] | None = None) -> pd.DataFrame:
    """Retrain without each set of ids (Definition 2; mode all: from the first epoch, last:
    the last epoch only), with the set's `fixes` (sample id → new label, one mapping per
    set, see checked_fixes) from the same epoch, every set in one SGD run vectorised over the
    removal masks and label vectors (counterfactual_sgd, `chunk` sets at a time), and
    measure each retrained model. One row per set: query_loss (the mean loss over the
    validation images but the selection part and `exclude`: the query whose change the
    scores estimate), val_loss, val_error, selection_loss, selection_error (NaN without a
    selection part), test_loss, test_error. `query`: another query loss of θ (e.g. one
    test image's, test_loss_fn) instead of the validation one; `measure(θ)`: more columns
    of each row (a mapping). `beside`: other work done at the same time as the first chunk
    (sgd.in_parallel: on a core of its own where one is free), or first when the chunks run
    elsewhere.
    With the run's `outcome_executor` set, more than one chunk and neither `query` nor
    `measure`, the chunks may run elsewhere (each chunk is computed the same way wherever it
    runs; progress then comes per chunk)."""
    first = first_retrained(run, mode)
    fixes = list(fixes) if fixes is not None else [{}] * len(removals)
    if len(fixes) != len(removals):
        raise RunError("give one set of fixes per set of removals")
    for ids in removals:
        check_training_ids(run, ids)
    fixes = [checked_fixes(run, f, first, ids) for f, ids in zip(fixes, removals)]
    per_chunk = (run.schedule.epochs - first) * run.schedule.steps_per_epoch
    chunks = [(removals[start:start + chunk], fixes[start:start + chunk])
              for start in range(0, len(removals), chunk)]
    total = len(chunks) * per_chunk
    report = counted(on_progress, phase, total)
    executor = run.outcome_executor
    elsewhere = executor(run, chunks, mode, list(exclude)) \
        if executor is not None and len(chunks) > 1 and query is None and measure is None \
        else None
    rows = []
    if elsewhere is None:
        for part, fixed in chunks:
            rows += outcome_rows(run, part, mode, exclude, report, fixed, query, measure, beside)
            beside = None
    if beside is not None:  # no chunks here
        beside()
    if elsewhere is None:
        return pd.DataFrame(rows)
    for k, part in enumerate(elsewhere, 1):
        rows += part
        if on_progress:
            on_progress(Progress(phase, k * per_chunk, total))
    return pd.DataFrame(rows)

def outcome_rows(run: Run, removals: list[list[str]], mode: str = "all",
                 exclude: Iterable[str] = (), on_step: Callable | None = None,
                 fixes: list[Mapping[str, list[int]]] | None = None,
                 query: Callable[[Params], torch.Tensor] | None = None,
                 measure: Callable[[Params], Mapping] | None = None,
                 beside: Callable[[], None] | None = None) -> list[dict]:
    """One chunk of outcomes(): every set of ids, with its checked fixes (checked_fixes: sample
    id → [class index, first epoch]), in one vectorised counterfactual SGD run, `beside` done at
    the same time (sgd.in_parallel)."""
    epochs = range(first_retrained(run, mode), run.schedule.epochs)
    query = query or run.query_loss(exclude)
    fixes = fixes if fixes is not None else [{}] * len(removals)
    gone = torch.zeros(len(removals), len(run.train_ids), dtype=torch.bool,
                       device=run.device)
    fixed = torch.full(gone.shape, -1, device=run.device)  # new label, or −1: none
    for m, (ids, fix) in enumerate(zip(removals, fixes)):
        gone[m, [run.position[sid] for sid in ids]] = True
        for sid, (c, _) in fix.items():
            fixed[m, run.position[sid]] = c
    theta0 = run.checkpoints[epochs.start]
    from .costs import vmap_chunk  # costs times runs, which use this module
    thetas = counterfactual_sgd(
        run.objective, run.schedule, theta0, lambda k: run.keep_at(k)[None] & ~gone,
        epochs, on_step,
        labels=lambda k: torch.where(fixed >= 0, fixed, run.labels_at(k)[None]),
        chunk_size=vmap_chunk(run) if len(gone) > 1 else None, workers=workers(run.device),
        beside=beside)
    rows = []
    for m in range(len(gone)):
        theta = {name: p[m] for name, p in thetas.items()}
        with torch.no_grad():
            query_loss = float(query(theta))
        rows.append({"query_loss": query_loss,
                     **dict(zip(("val_loss", "val_error"), run.evaluate("val", theta))),
                     **dict(zip(("selection_loss", "selection_error"),
                                run.evaluate("selection", theta))),
                     **dict(zip(("test_loss", "test_error"), run.evaluate("test", theta))),
                     **(measure(theta) if measure else {})})
    return rows
