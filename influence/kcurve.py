"""How many should I remove? The validation curve over k.

Given a ranking (most harmful first), retrain without its top k for every k of KS (clipped to
the images in use) and, as controls, without R random sets of each size: every removal in ONE
vectorised counterfactual SGD (counterfactual.outcomes; Definition 2, mode last by default). Each
retrained model is judged on the run's *selection* part: validation images held out of the
influence query (RunConfig.selection_fraction), so the curve does not reward fitting the query
the ranking was computed on, and the test images stay untouched.

A size k passes when its top k beats removing k random images on the selection part, on the
**error and the loss** both, and is not worse than removing nothing:

* against the random sets of its size, the prediction-interval test of influence.compare
  (t = (mean − top) / (s·√(1 + 1/R)) with R − 1 degrees of freedom, one-sided; the empirical
  p where the random sets show no spread), once for the error and once for the loss; the size's
  p is the larger of the two (an intersection-union test: it beats random on both);
* Holm's correction over every k tried: picking the best of many sizes must not pass as a
  finding;
* its selection error and loss are at most those with nothing removed.

The suggestion is the passing k with the lowest selection error (then loss); none passes →
remove nothing. Beating k = 0 alone is not enough: removing any 200 images can lower the loss
of an overfitted model, and a ranking is worth following only when its top k does better than
as many random images. The report also says what the suggested set holds: how many of its
images the label check flags (the caller passes their ids), against the random sets' average.
The spread of the lowest-loss k over bootstrap resamples of the selection images is kept as
its uncertainty.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from . import compare
from .cleaning import random_removals
from .config import RunError
from .counterfactual import check_training_ids, first_retrained, outcomes
from .progress import ProgressFn
from .runs import Run
from .sgd import per_sample_loss, predictions

KS = (0, 5, 10, 20, 50, 100, 200, 500)  # the numbers of top-ranked images removed
CONTROLS = 10  # random sets of each size: the prediction-interval test passes with any R ≥ 2
BOOTSTRAP = 1000  # resamples of the selection images for the arg-min's uncertainty
NO_HELP = "removing the top images is not recommended"


def sizes(n_in_use: int, ks: Iterable[int] = KS) -> list[int]:
    """The k of `ks` that leave at least one training image, always with 0, ascending."""
    return sorted({0, *(int(k) for k in ks if 0 <= k < n_in_use)})


def per_image(run: Run, theta) -> dict:
    """Per selection image: its loss and whether the model gets it right."""
    out = run.outputs("selection", theta)
    y = run.part("selection").y
    return {"selection_losses": per_sample_loss(out, y).double().cpu().numpy(),
            "selection_right": (predictions(out) == y).cpu().numpy()}


def check_curve(run: Run, ranked: pd.DataFrame, mode: str = "last",
                controls: int = CONTROLS) -> list[str]:
    """The one check of a curve's inputs: a run with a selection part, a known mode, 0 or more
    controls and a ranking of training images of this run. Returns the ranking's ids,
    de-duplicated, most harmful first."""
    if len(run.selection) == 0:
        raise RunError("this run holds out no selection images (it was trained before the "
                       "selection part, or with a selection share of 0), so how many to remove "
                       "cannot be judged honestly: train it again with a selection share above "
                       "0")
    first_retrained(run, mode)  # a known mode
    if controls < 0:
        raise RunError("the number of random controls must be 0 or more")
    ids = list(dict.fromkeys(ranked.sample_id))
    if not ids:
        raise RunError("the ranking is empty")
    check_training_ids(run, ids)
    return ids


def curve(run: Run, ranked: pd.DataFrame, mode: str = "last", controls: int = CONTROLS,
          seed: int = 0, ks: Iterable[int] = KS, exclude: Iterable[str] = (),
          on_progress: ProgressFn | None = None, flagged: Iterable[str] = ()
          ) -> tuple[pd.DataFrame, dict]:
    """The curve of a ranking (`ranked`: sample_id, most harmful first, e.g. methods.rank) and
    the suggestion (suggest). One row per retrained model: k, kind ("top" or "random"), draw (0
    for the top-k, 1..R for the random sets), flagged (how many of its removed images are in
    `flagged`, the label check's flagged training ids), the columns of counterfactual.outcomes
    (selection_loss, selection_error, query_loss, …) and the per-image selection losses and
    correctness."""
    ids = check_curve(run, ranked, mode, controls)
    flagged = set(flagged) & set(run.train_ids)
    ks = sizes(len(ids), ks)
    plan = [("top", k, 0, ids[:k]) for k in ks]
    for k in ks[1:]:
        plan += [("random", k, d + 1, sid) for d, sid in
                 enumerate(random_removals(run, k, controls, seed + k))]
    rows = outcomes(run, [removed for *_, removed in plan], mode, exclude, on_progress,
                    phase="curve", measure=lambda theta: per_image(run, theta))
    frame = pd.concat([pd.DataFrame([(kind, k, d, len(flagged.intersection(removed)))
                                     for kind, k, d, removed in plan],
                                    columns=["kind", "k", "draw", "flagged"]), rows], axis=1)
    found = suggest(frame, seed=seed, flagged_total=len(flagged) if flagged else None)
    found.update(mode=mode, controls=controls)
    return frame, found


def size_tests(frame: pd.DataFrame) -> pd.DataFrame:
    """Per k > 0 of a curve frame: the top-k's selection error and loss, the random sets'
    means, the p-values of the top-k against the random sets of its size (error, loss, and the
    larger of the two), Holm-corrected over the sizes, whether it is not worse than removing
    nothing, and whether it passes."""
    top = frame[frame.kind == "top"].set_index("k").sort_index()
    rand = frame[frame.kind == "random"]
    none = top.loc[0]
    rows = []
    for k, t in top.iloc[1:].iterrows():
        at = rand[rand.k == k]
        p_error, test = compare.random_p(t.selection_error, at.selection_error)
        p_loss, _ = compare.random_p(t.selection_loss, at.selection_loss)
        rows.append({"k": int(k), "error": float(t.selection_error),
                     "loss": float(t.selection_loss),
                     "random_error": float(at.selection_error.mean()) if len(at) else np.nan,
                     "random_loss": float(at.selection_loss.mean()) if len(at) else np.nan,
                     "random_sets": len(at), "random_test": test,
                     "p_error": p_error, "p_loss": p_loss,
                     "p": np.nan if np.isnan([p_error, p_loss]).any() else max(p_error, p_loss),
                     "not_worse": bool(t.selection_error <= none.selection_error
                                       and t.selection_loss <= none.selection_loss),
                     "flagged": int(t.flagged) if "flagged" in t else None,
                     "random_flagged": float(at.flagged.mean())
                     if "flagged" in at and len(at) else None})
    tests = pd.DataFrame(rows, columns=["k", "error", "loss", "random_error", "random_loss",
                                        "random_sets", "random_test", "p_error", "p_loss", "p",
                                        "not_worse", "flagged", "random_flagged"])
    tests["p_holm"] = compare.holm(tests.p) if len(tests) else []
    tests["passes"] = (tests.p_holm < compare.ALPHA) & tests.not_worse
    return tests


def suggest(frame: pd.DataFrame, alpha: float = compare.ALPHA, resamples: int = BOOTSTRAP,
            seed: int = 0, flagged_total: int | None = None) -> dict:
    """The suggestion from a curve frame (curve; rows kind "top" for every k, k = 0 among
    them, and kind "random"; columns k, selection_loss, selection_error, selection_losses: the
    per-image losses, and optionally flagged). k: the passing size (size_tests) with the lowest
    selection error, then loss, or 0; helps: some size passes; candidate: that k, or else the
    size closest to passing (lowest Holm p), whose figures the keys error, loss, random_error,
    random_loss, p_error, p_loss, p, p_holm, not_worse, p_none (one-sided paired t-test of its
    per-image losses against k = 0's, for information), flagged_in_set and random_flagged
    hold; sizes: every size's tests; best_k: the k of the lowest mean loss, with its
    uncertainty over `resamples` bootstrap resamples of the selection images (stability: the
    share picking best_k; k_low, k_high: 5–95 % range); sentence: the suggestion in plain
    words."""
    top = frame[frame.kind == "top"].sort_values("k")
    ks = top.k.to_numpy()
    if len(ks) == 0 or ks[0] != 0:
        raise ValueError("the curve needs its top-k rows with k = 0 among them")
    losses = np.stack(top.selection_losses.to_list()).astype(float)
    tests = size_tests(frame)
    passing = tests[tests.passes]
    helps = bool(len(passing))
    if helps:
        chosen = passing.sort_values(["error", "loss", "k"]).iloc[0]
    elif len(tests):
        chosen = tests.assign(order=tests.p_holm.fillna(np.inf)).sort_values(
            ["order", "error", "k"]).iloc[0]
    else:
        chosen = None
    mean = losses.mean(1)
    best = int(np.argmin(mean))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, losses.shape[1], (resamples, losses.shape[1]))
    picked = ks[np.argmin(losses[:, pick].mean(2), axis=0)]
    none = top.iloc[0]
    result = {"k": int(chosen.k) if helps else 0, "helps": helps,
              "candidate": int(chosen.k) if chosen is not None else 0,
              "error_none": float(none.selection_error), "loss_none": float(none.selection_loss),
              "tests": len(tests), "n_selection": int(losses.shape[1]),
              "controls": int(tests.random_sets.max()) if len(tests) else 0,
              "best_k": int(ks[best]), "stability": float(np.mean(picked == ks[best])),
              "k_low": int(np.percentile(picked, 5, method="lower")),
              "k_high": int(np.percentile(picked, 95, method="higher")),
              "flagged_total": flagged_total, "sizes": tests.to_dict("records")}
    keys = ("error", "loss", "random_error", "random_loss", "random_test", "p_error", "p_loss",
            "p", "p_holm", "not_worse")
    if chosen is not None:
        result.update({key: (chosen[key].item() if hasattr(chosen[key], "item")
                             else chosen[key]) for key in keys})
        row = int(np.flatnonzero(ks == chosen.k)[0])
        result["p_none"] = paired_p(losses[row], losses[0])
        result["flagged_in_set"] = None if flagged_total is None else int(chosen.flagged)
        result["random_flagged"] = None if flagged_total is None else chosen.random_flagged
    else:
        result.update({key: None for key in keys}, p_none=None, flagged_in_set=None,
                      random_flagged=None)
    result["p_random"] = result["p"]  # the name the CLI printed before
    result["sentence"] = in_words(result)
    return result


def paired_p(losses: np.ndarray, none: np.ndarray) -> float:
    """One-sided paired t-test: are the per-image losses below those with nothing removed?
    1.0 when nothing changed."""
    if np.allclose(losses, none, rtol=0, atol=1e-12):
        return 1.0
    return float(stats.ttest_rel(losses, none, alternative="less").pvalue)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def in_words(s: dict) -> str:
    """The suggestion in plain words: what to do, why, and what the set holds."""
    k, n = s["candidate"], s["n_selection"]
    holds = ""
    if s.get("flagged_in_set") is not None and k:
        holds = (f" {s['flagged_in_set']} of these {k} images are also flagged by the label "
                 f"check ({s['flagged_total']} flagged in all; {s['random_flagged']:.1f} in a "
                 f"random set of {k} on average).")
    tried = (f"corrected for the {s['tests']} sizes tried" if s["tests"] > 1 else "")
    if s["helps"]:
        return (f"Suggested: remove the top {k}. On the {n:,} held-out selection images this "
                f"lowers the error from {_pct(s['error_none'])} to {_pct(s['error'])}, and "
                f"removing {k} random images instead gives {_pct(s['random_error'])} on "
                f"average ({compare.p_text(s['p_holm'])}{', ' + tried if tried else ''})." + holds)
    no = f"{NO_HELP[0].upper()}{NO_HELP[1:]}"
    if not s["tests"]:
        return f"{no}: there are too few training images to try removing any."
    if not s["controls"]:
        return (f"{no}: no random sets were removed to compare with, so the curve cannot tell "
                "a good ranking from luck.")
    if s["p_holm"] is not None and s["p_holm"] < 0.05 and not s["not_worse"]:
        return (f"{no}: the top {k} did better than {k} random images, but removing them "
                f"still leaves the held-out selection images worse off than removing nothing "
                f"(error {_pct(s['error_none'])} → {_pct(s['error'])}, loss "
                f"{s['loss_none']:.4f} → {s['loss']:.4f})." + holds)
    return (f"{no}: on the {n:,} held-out selection images no size tried did clearly better "
            f"than removing as many random images (closest: the top {k}, error "
            f"{_pct(s['error'])} against {_pct(s['random_error'])} for random sets of {k} and "
            f"{_pct(s['error_none'])} with nothing removed; {compare.p_text(s['p_holm'])}"
            f"{', ' + tried if tried else ''})." + holds)


def band(frame: pd.DataFrame) -> pd.DataFrame:
    """Per k: the top-k's selection loss and error (and how many of it the label check flags),
    and the random sets' mean, lowest and highest (the band a ranking must fall below)."""
    columns = ["selection_loss", "selection_error", *(["flagged"] * ("flagged" in frame))]
    top = frame[frame.kind == "top"].set_index("k")[columns]
    rand = frame[frame.kind == "random"].groupby("k")[["selection_loss", "selection_error"]]
    out = top.join(rand.mean().add_prefix("random_mean_"), how="left")
    out = out.join(rand.min().add_prefix("random_low_")).join(rand.max().add_prefix("random_high_"))
    return out.reset_index()


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """The curve without its per-image columns (for a CSV)."""
    return frame.drop(columns=["selection_losses", "selection_right"])

