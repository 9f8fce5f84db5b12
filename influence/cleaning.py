"""A cleaning round: retrain without the chosen images and with the chosen labels fixed
(counterfactual SGD, Definition 2, with the new labels from the same epoch), and, as controls,
the same round done at random R times (all R in one vectorised run); then say with the
statistics of influence.compare whether the cleaned model is better than the one before and
better than cleaning at random.

The random control of a round that removes r images and fixes f labels removes r random images
and gives f other random images a random label other than their own (uniformly among the other
classes), all drawn from the images still in use with no fixed label yet. For a round that only
removes, this is the random removal of as many images."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from . import compare
from .config import RunError
from .counterfactual import Changes, changes, outcomes
from .progress import ProgressFn
from .run_folder import TrainingLog, save
from .runs import Run

CONTROLS = 20  # random removals (and fixes) of the same size, by default


def random_controls(run: Run, removals: int, fixes: int, count: int, seed: int = 0
                    ) -> list[tuple[list[str], dict[str, int]]]:
    """`count` random rounds of `removals` removed ids and `fixes` fixes (id → class index of a
    random other label), drawn without overlap from the training ids still in use and not
    fixed: the controls."""
    pool = [sid for sid in run.train_ids
            if sid not in run.config.removed and sid not in run.config.fixes]
    labels, classes = run.objective.y.cpu().numpy(), len(run.data.classes)
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(count):
        chosen = rng.choice(len(pool), size=min(removals + fixes, len(pool)), replace=False)
        to_fix = sorted(chosen[removals:])
        new = (labels[[run.position[pool[i]] for i in to_fix]]
               + rng.integers(1, classes, len(to_fix))) % classes if to_fix else []
        rounds.append(([pool[i] for i in sorted(chosen[:removals])],
                       {pool[i]: int(c) for i, c in zip(to_fix, new)}))
    return rounds


def random_removals(run: Run, k: int, count: int, seed: int = 0) -> list[list[str]]:
    """`count` sets of k training ids still in use, each drawn at random."""
    return [removed for removed, _ in random_controls(run, k, 0, count, seed)]


@dataclass(frozen=True)
class Round:
    """A cleaning round's checked inputs (check_round)."""
    changes: Changes  # the images removed and the labels fixed, checked by changes()
    mode: str
    controls: int


def check_round(run: Run, remove_ids: Iterable[str], mode: str = "all",
                controls: int = CONTROLS, fixes: Mapping[str, str | int] | None = None) -> Round:
    """The one check of a cleaning round's inputs: at least one image to remove or to fix, 0 or
    more controls, and the removals (de-duplicated) and fixes (sample id → new label: a class
    name or index) checked by counterfactual.changes in `mode`."""
    remove_ids = list(remove_ids)
    if not remove_ids and not fixes:
        raise RunError("give at least one image to remove or to fix")
    if controls < 0:
        raise RunError("the number of random controls must be 0 or more")
    return Round(changes(run, remove_ids, mode, fixes), mode, controls)


def clean(run: Run, remove_ids: list[str], mode: str = "all", controls: int = CONTROLS,
          seed: int = 0, exclude: Iterable[str] = (), out: str | os.PathLike | None = None,
          on_progress: ProgressFn | None = None,
          fixes: Mapping[str, str | int] | None = None) -> tuple[Run, dict]:
    """Retrain `run` without `remove_ids` and with `fixes` (sample id → new label: a class name
    or index), saved to `out` when given, and `controls` random rounds of the same size
    (random_controls): run_round of the inputs checked by check_round."""
    return run_round(run, check_round(run, remove_ids, mode, controls, fixes), seed, exclude,
                     out, on_progress)


def run_round(run: Run, planned: Round, seed: int = 0, exclude: Iterable[str] = (),
              out: str | os.PathLike | None = None, on_progress: ProgressFn | None = None
              ) -> tuple[Run, dict]:
    """A checked cleaning round (check_round): the retrained run, saved to `out` when given,
    and the verdict (compare.cleaning_verdict) against `planned.controls` random rounds of the
    same size, with the change of the query loss (the mean validation loss without `exclude`),
    which a ranking's summed scores estimate."""
    checked, mode = planned.changes, planned.mode
    log = TrainingLog(on_progress)
    child = run.apply(checked, log)
    if out is not None:
        save(child, out, log.frame())
    exclude = list(exclude)
    rounds = random_controls(run, len(checked.removed), len(checked.fixes), planned.controls,
                             seed)
    errors = outcomes(run, [r for r, _ in rounds], mode, exclude, on_progress, phase="control",
                      fixes=[f for _, f in rounds]).test_error if rounds else []
    query = run.query_loss(exclude)
    verdict = compare.cleaning_verdict(run.correct("test"), child.correct("test"), list(errors))
    verdict.update(removed=len(checked.removed), relabelled=len(checked.fixes), mode=mode,
                   query_change=float(query(child.theta).detach() - query(run.theta).detach()))
    return child, verdict
