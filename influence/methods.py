"""Every way of ranking the training instances, in one registry: the only place that knows a
ranking's key.

A ranking gives one score per training position with SGD-influence's sign convention: negative =
harmful or more suspicious, so sorting ascending puts the images to look at first. Each entry
says what its score means: rankings that estimate the change of validation loss when an instance
is removed (`retrain_mode` names the retraining mode they predict) can be checked against real
retraining and summed over a group; the others rank by suspicion only. It also says what else
its computation gives (relabel effects, batched test-image queries), how its progress is shown
and its default options.

The app, its background jobs, the CLI and the benchmarks all read this registry (`keys` selects
by any field). Adding a ranking is one entry here plus its scoring function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import numpy as np
import pandas as pd

from . import baselines, labels
from .config import RunError
from .progress import ProgressFn
from .runs import Run


def amount(score: float) -> str:
    """The size of a score in words: two significant digits (scientific below 1e-4)."""
    return f"{abs(score):.2g}" if abs(score) >= 1e-4 else f"{abs(score):.1e}"


def removal_in_words(score: float, **_) -> str:
    """An estimated change of validation loss, in words."""
    return (f"removing this is estimated to {'lower' if score < 0 else 'raise'} validation loss "
            f"by {amount(score)}")


@dataclass(frozen=True)
class Ranking:
    key: str
    name: str  # short name, for tables and reports
    title: str  # what the app calls it
    help: str  # one or two sentences for a non-expert
    compute: Callable[..., np.ndarray | pd.DataFrame]  # (run, on_progress=None, **options) →
    # one score per training position; or a frame with one row per position: column "influence"
    # and extra columns that are shown and kept with the ranking (e.g. a suggested label)
    in_words: Callable[..., str] = removal_in_words  # one score, in plain words: called as
    # in_words(score, **row) with the other columns of its row (e.g. suggested_label), which
    # it may use or ignore
    retrain_mode: str | None = "all"  # the retraining ("all"/"last" epochs) whose effect of
    # removal it estimates, or None: a ranking by suspicion only
    flag: tuple[str, float | str] | None = ("Harmful images (score below 0)", 0.0)  # what a
    # count means: (what, threshold) counts scores below it; (what, column) counts the rows
    # where that boolean column is true; None: no count
    in_app: bool = True
    relabels: bool = False  # its retrace also gives relabel effects (Run.relabel_influence)
    explains: Literal["batched", "single"] | None = None  # "why this mistake?" for test
    # images: "batched" = many test images share one retrace (explain.retrace_test_images),
    # "single" = one test image at a time (compute with its loss as the query), None = it
    # cannot explain one
    phase: Literal["score", "rank"] = "rank"  # its progress: "score" = SGD-influence's retraced
    # steps, "rank" = a baseline's own units
    options: dict = field(default_factory=dict)  # default keyword options of compute
    refines: str | None = None  # the ranking whose ends this one re-scores (CLI score --refine)

    @property
    def estimates_removal(self) -> bool:
        return self.retrain_mode is not None

    @property
    def last_epoch_only(self) -> bool:
        """Does it follow the last epoch only (Run.influence/explain/relabel_influence)? A
        ranking estimates the retraining it retraces: the last epoch, or all of them."""
        return self.retrain_mode == "last"

    def count_flagged(self, frame: pd.DataFrame) -> int:
        """The count `flag` names, over a ranked table (methods.rank)."""
        if self.flag is None:
            raise RunError(f"{self.name} flags no images")
        what = self.flag[1]
        return int(frame[what].sum() if isinstance(what, str) else (frame.influence < what).sum())

    def row_in_words(self, row) -> str:
        """One row of a ranked table (a mapping with "influence" and the extra columns), in
        words."""
        row = dict(row)
        return self.in_words(row.pop("influence"), **row)


def label_check_in_words(score: float, suggested_label: str | None = None,
                         suggested_p: float | None = None, label: str | None = None, **_) -> str:
    """A label check row: quality = the out-of-sample probability of the given label."""
    quality = score + 1
    text = f"label quality {quality:.2g}: a model trained without this image gives its label " \
           f"{quality:.0%}"
    if suggested_label is None or suggested_p is None:
        return text
    if label is not None and str(suggested_label) == str(label):
        return text + "; it agrees with the label"
    return text + f"; it suggests {suggested_label} ({suggested_p:.0%})"


REFINE = 50  # the ends re-scored by "sgd-refined": the 50 most harmful and 50 most helpful


DAMPING = 0.03  # λ of "sgd-damped" (benchmarks/results/retrace-variants.md)


def sgd_influence(run: Run, *, last_epoch_only: bool = False, **options) -> np.ndarray:
    """Run.influence: Algorithm 2 (its options: query, refine, damping, curvature)."""
    return run.influence(last_epoch_only=last_epoch_only, **options)


REGISTRY: dict[str, Ranking] = {r.key: r for r in (
    Ranking("sgd", "SGD-influence", "SGD-influence, exact (all epochs)",
            "Follows the whole training run backwards (the paper's Algorithm 2).",
            sgd_influence, relabels=True, explains="batched", phase="score"),
    Ranking("sgd-refined", "SGD-influence, refined ends", "SGD-influence, first-order exact at "
            "both ends (slower)",
            f"Algorithm 2, then the {REFINE} most harmful and the {REFINE} most helpful "
            "re-scored with the term Algorithm 2 drops when an image comes back in a later "
            "epoch: a first-order-exact estimate where it matters most, at the ends you tick.",
            sgd_influence, phase="score", options={"refine": REFINE}, refines="sgd"),
    Ranking("sgd-last", "SGD-influence (last epoch)", "SGD-influence, fast (last epoch)",
            "Follows only the last epoch backwards: a cheaper approximation (the paper's "
            "Section 7.2).",
            sgd_influence, retrain_mode="last", relabels=True, explains="batched",
            phase="score", options={"last_epoch_only": True}),
    Ranking("sgd-damped", "SGD-influence (damped)", "SGD-influence, damped (all epochs)",
            f"Follows the whole training run backwards like the exact ranking, but lets the "
            f"pull of each earlier step fade a little (damping λ = {DAMPING:g}): over many "
            "epochs the exact retrace can grow along directions where the loss curves "
            "downwards, and the first epochs then swamp the sum.",
            sgd_influence, explains="single", phase="score", options={"damping": DAMPING}),
    Ranking("confident-learning", "Confident learning", "likely wrong label (confident learning)",
            f"Your model is trained {labels.FOLDS} more times, each time without a different "
            f"1/{labels.FOLDS} of the images; each image is judged by the model that never saw "
            "it. Labels it finds implausible are flagged (cleanlab), with the label it "
            "suggests. For finding labels to look at and fix; it says nothing about the effect "
            "of removal on your model.",
            labels.confident_learning, in_words=label_check_in_words, retrain_mode=None,
            flag=("Labels that look wrong (flagged by cleanlab)", "flagged")),
    Ranking("kl", "Koh & Liang", "influence function (Koh & Liang)",
            "Koh & Liang's influence function at the final model. It assumes training reached a "
            "minimum, which a few epochs of SGD rarely do.", baselines.koh_liang,
            explains="single"),
    Ranking("tracin", "TracIn", "TracIn",
            "Adds up, over the saved epochs, how much each image pulled the same way as the "
            "validation loss (TracIn). No second derivatives: quick, but rougher.",
            baselines.tracin, explains="single"),
    Ranking("isolation-forest", "Isolation Forest", "unusual image (Isolation Forest)",
            "Images the trained network sees as unlike the others (Isolation Forest on its "
            "features). Ignores the labels.", baselines.isolation_forest,
            in_words=lambda s, **_: f"outlier score {s:+.3f} "
                                    f"({'unusual' if s < 0 else 'typical'} image)",
            retrain_mode=None, flag=("Unusual images (outlier score below 0)", 0.0)),
    Ranking("autoencoder", "Autoencoder", "unusual image (autoencoder)",
            "Images a small autoencoder reconstructs worst: odd-looking images. Ignores the "
            "labels and the model.", baselines.autoencoder,
            in_words=lambda s, **_: f"reconstruction error {-s:.3g} (higher: a more unusual "
                                    "image)",
            retrain_mode=None, flag=None),
    Ranking("random", "Random", "random order", "Seeded random scores: what any method must "
            "beat. (Each cleaning round's control already removes random images.)",
            baselines.random, in_words=lambda s, **_: f"random score {s:+.2f}", retrain_mode=None,
            flag=None, in_app=False),
    Ranking("confident-learning-pixels", "Confident learning (raw pixels)",
            "likely wrong label (raw-pixel confident learning)",
            "The former label check, kept for comparison in the benchmarks: cleanlab on a "
            "logistic regression over 50 principal components of the raw pixels, not on your "
            "model.", baselines.confident_learning_pixels,
            in_words=lambda s, **_: f"label quality {s + 1:.2g} (raw-pixel model)",
            retrain_mode=None, flag=None, in_app=False),
)}


def keys(**fields) -> tuple[str, ...]:
    """The keys of the rankings whose fields (or properties) have the given values, in the
    registry's order: e.g. keys(in_app=True), keys(relabels=True), keys(explains="batched")."""
    return tuple(k for k, r in REGISTRY.items()
                 if all(getattr(r, name) == value for name, value in fields.items()))


def get(key: str, among: Iterable[str] | None = None) -> Ranking:
    """The registry entry of `key`; RunError unless it is a ranking (of `among`, when given)."""
    among = tuple(REGISTRY if among is None else among)
    if key not in among or key not in REGISTRY:
        raise RunError(f"unknown ranking {key!r}: use one of {', '.join(among)}")
    return REGISTRY[key]


def estimating_removal(key: str) -> Ranking:
    """The registry entry of a ranking that estimates the effect of removal (the ones real
    retraining can check); RunError for the others."""
    ranking = get(key)
    if not ranking.estimates_removal:
        raise RunError(f"{ranking.name} does not estimate the effect of removing an image, so "
                       "real retraining cannot check it")
    return ranking


def _computed(run: Run, key: str, on_progress: ProgressFn | None, exclude: Iterable[str],
              options: dict) -> np.ndarray | pd.DataFrame:
    ranking = get(key)
    options = {**ranking.options, **options}
    if ranking.estimates_removal and exclude:  # the query without these validation images
        options["query"] = run.query_loss(exclude)
    return ranking.compute(run, on_progress=on_progress, **options)


def position_scores(run: Run, key: str, on_progress: ProgressFn | None = None,
                    exclude: Iterable[str] = (), **options) -> np.ndarray:
    """One score per training position (negative = harmful / suspicious). `exclude`:
    validation images to leave out of the query of the rankings that estimate removal."""
    result = _computed(run, key, on_progress, exclude, options)
    return result["influence"].to_numpy() if isinstance(result, pd.DataFrame) else result


def rank(run: Run, key: str, on_progress: ProgressFn | None = None, exclude: Iterable[str] = (),
         **options) -> pd.DataFrame:
    """The ranked table: sample_id, label, influence (the ranking's score), and any extra
    columns the ranking gives, for every training instance still in use, most harmful or
    suspicious first."""
    return run.ranking(_computed(run, key, on_progress, exclude, options))
