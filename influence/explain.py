"""Why this mistake? The training images that most raised, and most lowered, one test image's loss.

The query of Algorithm 2 becomes the loss of a single test image q: u_q = ∇θ ℓ(z_q; θ[T]), and
L̂_{−j}(u_q) estimates how q's loss changes when training image j is removed (negative: removing
j lowers it, so j is harmful to q). SGD-influence explains Q test images with one replay and Q
tangents (Run.explain); the other rankings that estimate removal (Koh & Liang, TracIn) take the
same query one test image at a time, for comparison.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from . import methods
from .progress import ProgressFn
from .runs import Run, RunError

BATCHED = {"sgd": False, "sgd-last": True}  # ranking key → last_epoch_only of Run.explain
SIDES = ("harmful", "helpful")  # removal lowers the test image's loss / raises it


def estimating(key: str) -> methods.Ranking:
    """The registry entry of a ranking that can explain a test image: one that estimates the
    effect of removal on a query."""
    ranking = methods.get(key)
    if not ranking.estimates_removal or key == "sgd-refined":
        usable = ", ".join(k for k, r in methods.REGISTRY.items()
                           if r.estimates_removal and k != "sgd-refined")
        raise RunError(f"{ranking.name} cannot explain a test image: use one of {usable}")
    return ranking


def scores(run: Run, key: str, test_ids: Iterable[str], on_progress: ProgressFn | None = None,
           **options) -> np.ndarray:
    """Q × N: the estimated change of each test image's loss when each training position is
    removed, by the ranking `key` (SGD-influence: all test images in one retrace)."""
    ranking, test_ids = estimating(key), list(test_ids)
    if key in BATCHED:
        return run.explain(test_ids, BATCHED[key], on_progress)
    run.test_positions(test_ids)  # every id checked before any work
    return np.stack([ranking.score(run, query=run.test_loss_fn(sid), on_progress=on_progress,
                                   **options) for sid in test_ids])


def in_words(score: float) -> str:
    """One score, in plain words."""
    amount = f"{abs(score):.2g}" if abs(score) >= 1e-4 else f"{abs(score):.1e}"
    return (f"without this image, the model's loss on this test image is estimated to "
            f"{'drop' if score < 0 else 'rise'} by {amount}")


def table(run: Run, test_ids: Iterable[str], matrix: np.ndarray, top: int = 20) -> pd.DataFrame:
    """One row per (test image, side, rank): the `top` training images whose removal most
    lowers that test image's loss (side harmful, most negative first) and the `top` whose
    removal most raises it (side helpful, most positive first). Images no longer in use are
    left out."""
    frames = []
    for test_id, row in zip(test_ids, matrix):
        ranked = run.ranking(row)
        for side, part in zip(SIDES, (ranked.head(top), ranked.iloc[::-1].head(top))):
            part = part[(part.influence < 0) if side == "harmful" else (part.influence > 0)]
            frames.append(pd.DataFrame({
                "test_id": test_id, "side": side, "rank": np.arange(1, len(part) + 1),
                "sample_id": part.sample_id.to_numpy(), "label": part.label.to_numpy(),
                "score": part.influence.to_numpy()}))
    columns = ["test_id", "side", "rank", "sample_id", "label", "score"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)


def check(run: Run, key: str, test_id: str, n: int = 10, row: np.ndarray | None = None,
          on_progress: ProgressFn | None = None, **options) -> dict:
    """The trust check for one test image: its estimates (`row`, or computed here) against the
    real change of that image's loss after retraining without n single training images and
    random groups (Run.check, one vectorised retraining, in the mode the ranking estimates)."""
    if row is None:
        row = scores(run, key, [test_id], on_progress)[0]
    return methods.check(run, key, n, on_progress, ranked=run.ranking(row),
                         query=run.test_loss_fn(test_id), **options)
