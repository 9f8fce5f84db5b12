"""A cleaning round: retrain without the chosen images (counterfactual SGD, Definition 2), and, as
controls, without as many random images R times (all R in one vectorised run); then say with the
statistics of influence.compare whether the cleaned model is better than the one before and
better than removing images at random."""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from . import compare
from .progress import ProgressFn
from .runs import Run, RunError, TrainingLog

CONTROLS = 20  # random removals of the same size, by default


def random_removals(run: Run, k: int, count: int, seed: int = 0) -> list[list[str]]:
    """`count` sets of k training ids still in use, each drawn at random: the controls."""
    pool = [sid for sid in run.train_ids if sid not in run.config.removed]
    rng = np.random.default_rng(seed)
    return [[pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)),
                                                replace=False))] for _ in range(count)]


def clean(run: Run, remove_ids: list[str], mode: str = "all", controls: int = CONTROLS,
          seed: int = 0, exclude: Iterable[str] = (), out: str | os.PathLike | None = None,
          on_progress: ProgressFn | None = None) -> tuple[Run, dict]:
    """Retrain `run` without `remove_ids` (saved to `out` when given) and without `controls`
    random sets of as many images. Returns the cleaned run and the verdict
    (compare.cleaning_verdict) with the change of the query loss (the mean validation loss
    without `exclude`), which a ranking's summed scores estimate."""
    remove_ids = list(dict.fromkeys(remove_ids))
    if not remove_ids:
        raise RunError("give at least one image to remove")
    if controls < 0:
        raise RunError("the number of random controls must be 0 or more")
    log = TrainingLog(on_progress)
    child = run.retrain(remove_ids, mode, log)
    if out is not None:
        child.save(out, log.frame())
    exclude = list(exclude)
    sets = random_removals(run, len(remove_ids), controls, seed)
    errors = run.outcomes(sets, mode, exclude, on_progress, phase="control").test_error \
        if sets else []
    query = run.query_loss(exclude)
    verdict = compare.cleaning_verdict(run.correct("test"), child.correct("test"), list(errors))
    verdict.update(removed=len(remove_ids), mode=mode,
                   query_change=float(query(child.theta).detach() - query(run.theta).detach()))
    return child, verdict
