"""Which label to give an image: SGD-influence's relabel effects (Run.relabel_influence) as a
table and in words.

L̂_{j→c} estimates the change of the query loss (the mean validation loss) if training image j
had had label c all along; negative = that label lowers it. An image's best label is the other
class with the lowest effect: argmin_{c ≠ y_j} L̂_{j→c}.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from . import methods
from .config import RunError
from .methods import amount
from .progress import ProgressFn
from .runs import Run

MAX_CLASS_COLUMNS = 20  # tables show the effect of every label up to this many classes


def best_labels(effects: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `effects` (N × classes): the class other than `labels` with the lowest effect,
    and that effect (−1 and NaN for rows without effects, e.g. removed images)."""
    other = np.where(np.arange(effects.shape[1])[None] == np.asarray(labels)[:, None], np.inf,
                     np.nan_to_num(effects, nan=np.inf))
    best = other.argmin(1)
    effect = other[np.arange(len(best)), best]
    missing = ~np.isfinite(effect)
    return np.where(missing, -1, best), np.where(missing, np.nan, effect)


def table(run: Run, effects: np.ndarray, per_class: bool | None = None) -> pd.DataFrame:
    """sample_id, label (the label in use), best_label, effect_best, and effect_to_<class> for
    every class (per_class; default: when there are at most MAX_CLASS_COLUMNS classes), for
    every training image still in use, the most helpful relabel first."""
    classes = run.data.classes
    labels = run.objective.y.cpu().numpy()
    best, effect = best_labels(effects, labels)
    frame = pd.DataFrame({"sample_id": run.train_ids,
                          "label": [classes[c] for c in labels],
                          "best_label": [classes[c] if c >= 0 else "" for c in best],
                          "effect_best": effect})
    if per_class if per_class is not None else len(classes) <= MAX_CLASS_COLUMNS:
        each = pd.DataFrame(effects, columns=[f"effect_to_{c}" for c in classes])
        frame = pd.concat([frame, each], axis=1)
    frame = frame[~frame.sample_id.isin(run.config.removed)]
    return frame.sort_values("effect_best", kind="stable").reset_index(drop=True)


def rank_with_effects(run: Run, key: str, on_progress: ProgressFn | None = None,
                      exclude: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """methods.rank of a ranking whose retrace also gives relabel effects (Ranking.relabels)
    and, from the same retrace, the relabel table of its effects (table): the query is the mean
    validation loss without `exclude`, as for methods.rank."""
    ranking, relabelling = methods.get(key), methods.keys(relabels=True)
    if not ranking.relabels:
        raise RunError(f"relabel effects come with {' or '.join(relabelling)}, not {key!r}")
    exclude = list(exclude)
    scores, effects = run.relabel_influence(run.query_loss(exclude) if exclude else None,
                                            ranking.last_epoch_only, on_progress)
    return run.ranking(scores), table(run, effects)


def in_words(effect: float, best_label: str, removal: float | None = None) -> str:
    """E.g. "relabelling as 7 is estimated to lower validation loss by 0.012; removing it by
    0.004"."""
    way = lambda v: "lower" if v < 0 else "raise"  # noqa: E731
    text = (f"relabelling as {best_label} is estimated to {way(effect)} validation loss by "
            f"{amount(effect)}")
    if removal is None:
        return text
    if way(removal) == way(effect):
        return text + f"; removing it by {amount(removal)}"
    return text + f"; removing it would {way(removal)} it by {amount(removal)}"
