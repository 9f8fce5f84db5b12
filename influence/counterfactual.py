"""Counterfactual outcomes (Definition 2): many retrainings of one run at once.

Each set of removed ids (with, optionally, labels fixed from the same epoch) is a removal mask
and a label vector of one counterfactual SGD run; `outcomes` runs every set in one SGD run
vectorised over them (counterfactual_sgd, torch.func.vmap) and measures each retrained model.
The trust check, the cleaning round's random controls and the k-curve are all outcomes of this
kind.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import pandas as pd
import torch

from .config import RunError
from .progress import Progress, ProgressFn
from .sgd import Params, counterfactual_sgd

if TYPE_CHECKING:
    from .runs import Run


def checked_fixes(run: Run, fixes: Mapping[str, str | int], first: int, removing=()
                  ) -> dict[str, list[int]]:
    """Fixes (sample id → new label: a class name, or a class index) as config entries
    [class index, first epoch], checked: training images of this run, known labels, each
    different from the image's given label and from the label it has now, none removed
    (already, or in `removing`), and none fixed already from an earlier epoch than `first`
    (its labels could not be told apart)."""
    run.check_training_ids(fixes)
    removed = set(run.config.removed) | set(removing)
    current = run.objective.y.cpu().numpy()
    new = {}
    for sid, label in fixes.items():
        c = run.class_index(label)
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


def outcomes(run: Run, removals: list[list[str]], mode: str = "all", exclude: Iterable[str] = (),
             on_progress: ProgressFn | None = None, phase: str = "retrain",
             chunk: int = 32, fixes: list[Mapping[str, str | int]] | None = None,
             query: Callable[[Params], torch.Tensor] | None = None,
             measure: Callable[[Params], Mapping] | None = None) -> pd.DataFrame:
    """Retrain without each set of ids (Definition 2; mode all: from the first epoch, last:
    the last epoch only), with the set's `fixes` (sample id → new label, one mapping per
    set, see checked_fixes) from the same epoch, every set in one SGD run vectorised over the
    removal masks and label vectors (counterfactual_sgd, `chunk` sets at a time), and
    measure each retrained model. One row per set: query_loss (the mean loss over the
    validation images but the selection part and `exclude`: the query whose change the
    scores estimate), val_loss, val_error, selection_loss, selection_error (NaN without a
    selection part), test_loss, test_error. `query`: another query loss of θ (e.g. one
    test image's, test_loss_fn) instead of the validation one; `measure(θ)`: more columns
    of each row (a mapping).
    With the run's `outcome_executor` set, more than one chunk and neither `query` nor
    `measure`, the chunks may run elsewhere (each chunk is computed the same way wherever it
    runs; progress then comes per chunk)."""
    first = run.first_retrained(mode)
    fixes = list(fixes) if fixes is not None else [{}] * len(removals)
    if len(fixes) != len(removals):
        raise RunError("give one set of fixes per set of removals")
    for ids in removals:
        run.check_training_ids(ids)
    fixes = [checked_fixes(run, f, first, ids) for f, ids in zip(fixes, removals)]
    per_chunk = (run.schedule.epochs - first) * run.schedule.steps_per_epoch
    chunks = [(removals[start:start + chunk], fixes[start:start + chunk])
              for start in range(0, len(removals), chunk)]
    total = len(chunks) * per_chunk
    done = iter(range(1, total + 1))
    report = (lambda t: on_progress(Progress(phase, next(done), total))) \
        if on_progress else None
    executor = run.outcome_executor
    elsewhere = executor(run, chunks, mode, list(exclude)) \
        if executor is not None and len(chunks) > 1 and query is None and measure is None \
        else None
    rows = []
    if elsewhere is None:
        for part, fixed in chunks:
            rows += outcome_rows(run, part, mode, exclude, report, fixed, query, measure)
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
                 measure: Callable[[Params], Mapping] | None = None) -> list[dict]:
    """One chunk of outcomes(): every set of ids, with its checked fixes (checked_fixes: sample
    id → [class index, first epoch]), in one vectorised counterfactual SGD run."""
    epochs = range(run.first_retrained(mode), run.schedule.epochs)
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
    thetas = counterfactual_sgd(
        run.objective, run.schedule, theta0, lambda k: run.keep_at(k)[None] & ~gone,
        epochs, on_step,
        labels=lambda k: torch.where(fixed >= 0, fixed, run.labels_at(k)[None]))
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
