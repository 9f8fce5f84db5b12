"""A cleaning round: retrain without the chosen images and with the chosen labels fixed
(counterfactual SGD, Definition 2, with the new labels from the same epoch), and, as controls,
fair alternatives retrained in the same vectorised run; then say with the statistics of
influence.compare whether the cleaned model is better than the one before and better than
cleaning at random.

The controls are what a user could have done instead with as little knowledge:

* random rounds (R of them): remove as many random images as the round removes (drawn from the
  training images still in use), and fix as many random images *flagged by the label check* to
  the label check's suggested label as the round fixes — never a random wrong label, which
  would only inject noise and make any round look good;
* for a round with fixes, one more model: the same images removed instead of fixed.

CONTROLS = 5: the verdict tests the cleaned error against the random rounds with the
prediction-interval test (compare.interval_p, t with R − 1 degrees of freedom), which can pass
with any R ≥ 2, also after the correction for several rounds. With 5 controls a cleaned error
2.3 of the controls' standard deviations below their mean is significant at 0.05
(interval_threshold: t₀.₉₅(4)·√(1 + 1/5)), against 1.8 with 20, at a quarter of the
retraining; the assumption-free empirical p shown beside it cannot go below 1/(R + 1) with so
few (compare.controls_needed says how many it would need)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from . import compare
from .config import RunError
from .counterfactual import Changes, changes, check_training_ids, class_index, outcomes
from .progress import HeldBack, ProgressFn
from .run_folder import TrainingLog, save
from .runs import Run

CONTROLS = 5  # random rounds of the same size, by default (see above)


def interval_threshold(controls: int = CONTROLS, alpha: float = compare.ALPHA) -> float:
    """How many of the controls' standard deviations below their mean a cleaned error must lie
    for the prediction-interval test (compare.interval_p) to call it better at `alpha`:
    t_{1−α}(R − 1)·√(1 + 1/R)."""
    if controls < 2:
        return float("nan")
    return float(stats.t.isf(alpha, controls - 1) * np.sqrt(1 + 1 / controls))


def flagged_labels(check: pd.DataFrame) -> dict[str, str]:
    """{sample id: suggested label} of the images a label-check frame flags (columns sample_id,
    flagged, suggested_label: labels.confident_learning with the ids, or the stored
    confident-learning scores): what `flagged` of random_controls and clean takes."""
    rows = check[check.flagged.astype(bool)]
    return dict(zip(rows.sample_id, rows.suggested_label))


def label_check_flags(run: Run) -> dict[str, str]:
    """The label check of the training images of `run` (labels.confident_learning: k-fold
    training of the run's own model in one vectorised run), as flagged_labels."""
    from .labels import confident_learning
    return flagged_labels(confident_learning(run).assign(sample_id=run.train_ids))


def flagged_pool(run: Run, flagged: Mapping[str, str | int]) -> dict[str, int]:
    """The label check's flagged training images (`flagged`: sample id → its suggested label, a
    class name or index) that a random fix can draw from: still in use, not fixed already, and
    suggested a label other than the one they have; id → class index."""
    check_training_ids(run, flagged)
    current = run.objective.y.cpu().numpy()
    pool = {}
    for sid, label in flagged.items():
        c = class_index(run, label)
        if sid not in run.config.removed and sid not in run.config.fixes \
                and c != current[run.position[sid]]:
            pool[sid] = c
    return pool


def random_controls(run: Run, removals: int, fixes: int, count: int, seed: int = 0,
                    flagged: Mapping[str, str | int] | None = None
                    ) -> list[tuple[list[str], dict[str, int]]]:
    """`count` random rounds, each `removals` training ids still in use (not fixed) removed and
    `fixes` of the label check's flagged images (flagged_pool) fixed to their suggested label,
    the two drawn without overlap (all of them when fewer are there): the random controls of a
    round of that size. Fixes need `flagged`."""
    pool = [sid for sid in run.train_ids
            if sid not in run.config.removed and sid not in run.config.fixes]
    if fixes and count and flagged is None:
        raise RunError("random fixes are drawn from the label check's flagged images: give "
                       "them with their suggested labels")
    suggested = flagged_pool(run, flagged) if fixes and count else {}
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(count):
        removed = [pool[i] for i in
                   sorted(rng.choice(len(pool), size=min(removals, len(pool)), replace=False))]
        left = sorted(set(suggested) - set(removed), key=run.position.get)
        to_fix = sorted(rng.choice(len(left), size=min(fixes, len(left)), replace=False)) \
            if fixes else []
        rounds.append((removed, {left[i]: suggested[left[i]] for i in to_fix}))
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


def removed_instead(remove_ids: Iterable[str], fixes: Mapping[str, str | int]) -> list[str]:
    """The control "remove them instead": the round's removals and its fixed images, all
    removed."""
    return list(dict.fromkeys([*remove_ids, *fixes]))


def clean(run: Run, remove_ids: list[str], mode: str = "all", controls: int = CONTROLS,
          seed: int = 0, exclude: Iterable[str] = (), out: str | os.PathLike | None = None,
          on_progress: ProgressFn | None = None,
          fixes: Mapping[str, str | int] | None = None,
          flagged: Mapping[str, str | int] | None = None, rounds: int = 1
          ) -> tuple[Run, dict]:
    """Retrain `run` without `remove_ids` and with `fixes` (sample id → new label: a class name
    or index), saved to `out` when given, and its controls (run_round): run_round of the
    inputs checked by check_round."""
    return run_round(run, check_round(run, remove_ids, mode, controls, fixes), seed, exclude,
                     out, on_progress, flagged, rounds)


def run_round(run: Run, planned: Round, seed: int = 0, exclude: Iterable[str] = (),
              out: str | os.PathLike | None = None, on_progress: ProgressFn | None = None,
              flagged: Mapping[str, str | int] | None = None, rounds: int = 1
              ) -> tuple[Run, dict]:
    """A checked cleaning round (check_round): the retrained run, saved to `out` when given;
    and in one vectorised run (counterfactual.outcomes) its controls: `planned.controls` random
    rounds of the same size (random_controls; random fixes come from `flagged`, the label
    check's flagged images → suggested labels: flagged_labels; without it a round with fixes
    computes the label check here, label_check_flags) and, with fixes, the same images removed
    instead (removed_instead). The cleaned run retrains at the same time as its controls, on a
    CPU core of its own where one is free (sgd.in_parallel); their progress is reported once it
    is done.
    Returns the cleaned run and the verdict (compare.cleaning_verdict for `rounds` rounds
    compared on the test images) with the change of the query loss (the mean validation loss
    without `exclude`), which a ranking's summed scores estimate."""
    checked, mode, controls = planned.changes, planned.mode, planned.controls
    remove_ids, fixes = list(checked.removed), dict(checked.fixes)
    exclude = list(exclude)
    if fixes and controls and flagged is None:
        flagged = label_check_flags(run)
    sets = random_controls(run, len(remove_ids), len(fixes), controls, seed, flagged)
    if fixes:
        sets.append((removed_instead(remove_ids, fixes), {}))
    log, cleaned = TrainingLog(on_progress), []
    controls_progress = HeldBack(on_progress) if on_progress else None

    def retrain() -> None:  # the cleaned run, recorded, while the controls retrain beside it
        cleaned.append(run.apply(checked, log))
        if controls_progress:
            controls_progress.release()
    rows = None
    if sets:
        rows = outcomes(run, [r for r, _ in sets], mode, exclude, controls_progress,
                        phase="control", fixes=[f for _, f in sets],
                        measure=(lambda theta: {"test_right": run.correct("test", theta)})
                        if fixes else None, beside=retrain)
    else:
        retrain()
    child = cleaned[0]
    if out is not None:
        save(child, out, log.frame())
    errors = list(rows.test_error[:controls]) if rows is not None else []
    query = run.query_loss(exclude)
    verdict = compare.cleaning_verdict(
        run.correct("test"), child.correct("test"), errors, rounds,
        right_removed_instead=rows.test_right.iloc[-1] if fixes else None,
        removed=len(remove_ids), relabelled=len(fixes))
    verdict.update(mode=mode,
                   query_change=float(query(child.theta).detach() - query(run.theta).detach()))
    return child, verdict
