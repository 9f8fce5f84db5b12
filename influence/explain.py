"""Why this mistake? The training images that most raised, and most lowered, one test image's loss.

The query of Algorithm 2 becomes the loss of a single test image q: u_q = ∇θ ℓ(z_q; θ[T]), and
L̂_{−j}(u_q) estimates how q's loss changes when training image j is removed (negative: removing
j lowers it, so j is harmful to q). SGD-influence explains Q test images with one replay and Q
tangents (retrace_test_images: the rankings whose `explains` is "batched"); the other rankings
that can explain a test image (Koh & Liang, TracIn: "single") take the same query one test image
at a time, for comparison. The trust check of an explanation is influence.trust.of_test_image.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import torch

from . import methods
from .config import RunError
from .progress import ProgressFn, counted
from .runs import Run
from .sgd import Objective
from .sgd_influence import retrace_queries, sample_loss_gradients

MAX_TEST_IMAGES = 1000  # test images explained in one call (retrace_test_images)
CHUNK = 100  # queries carried through one replay (memory grows with it)
SIDES = ("harmful", "helpful")  # removal lowers the test image's loss / raises it


def retrace_test_images(run: Run, test_ids: Iterable[str], last_epoch_only: bool = False,
                        on_progress: ProgressFn | None = None, chunk: int = CHUNK) -> np.ndarray:
    """Q × N: L̂_{−j}(u_q) for every test image q of `test_ids` and training position j,
    u_q = ∇θ of q's loss at θ[T]: the estimated change of that test image's loss when j is
    removed (negative = removing j lowers it: j is harmful to q, e.g. pulled the model
    towards its wrong answer on a mistake). The queries go through one replay `chunk` at a
    time (retrace_queries)."""
    positions = run.test_positions(test_ids)
    if not 1 <= len(positions) <= MAX_TEST_IMAGES:
        raise RunError(f"explain 1 to {MAX_TEST_IMAGES} test images at a time, not "
                       f"{len(positions)}")
    K = run.schedule.epochs
    epochs = range(K - 1, K) if last_epoch_only else range(K)
    chunks = [positions[i:i + chunk] for i in range(0, len(positions), chunk)]
    every = run.replay_every()
    report = counted(on_progress, "score", len(chunks) * run.retrace_steps(epochs, every))
    test = run.part("test")
    rows = []
    for part in chunks:
        queries = Objective(run.model, test.x[part], test.y[part])
        us = sample_loss_gradients(queries, run.theta)
        rows.append(retrace_queries(run.objective, run.schedule, run.checkpoints,
                                    run.keep_at, us, epochs, report, run.labels_at, every,
                                    run.replay_ahead()))
    return torch.cat(rows).cpu().double().numpy()


def explaining(key: str) -> methods.Ranking:
    """The registry entry of a ranking that can explain a test image (Ranking.explains)."""
    ranking = methods.get(key)
    if ranking.explains is None:
        usable = ", ".join(k for k, r in methods.REGISTRY.items() if r.explains is not None)
        raise RunError(f"{ranking.name} cannot explain a test image: use one of {usable}")
    return ranking


def test_scores(run: Run, key: str, test_ids: Iterable[str],
                on_progress: ProgressFn | None = None, **options) -> np.ndarray:
    """Q × N: the estimated change of each test image's loss when each training position is
    removed, by the ranking `key` (batched: all test images in one retrace)."""
    ranking, test_ids = explaining(key), list(test_ids)
    if ranking.explains == "batched":
        return retrace_test_images(run, test_ids, ranking.last_epoch_only, on_progress)
    run.test_positions(test_ids)  # every id checked before any work
    return np.stack([methods.position_scores(run, key, on_progress, query=run.test_loss_fn(sid),
                                             **options) for sid in test_ids])


def in_words(score: float) -> str:
    """One score, in plain words."""
    return (f"without this image, the model's loss on this test image is estimated to "
            f"{'drop' if score < 0 else 'rise'} by {methods.amount(score)}")


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
