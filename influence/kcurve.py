"""How many should I remove? The validation curve over k.

Given a ranking (most harmful first), retrain without its top k for every k of KS (clipped to
the images in use) and, as controls, without R random sets of each size: every removal in ONE
vectorised counterfactual SGD (counterfactual.outcomes; Definition 2, mode last by default). Each
retrained model is judged on the run's *selection* part: validation images held out of the
influence query (RunConfig.selection_fraction), so the curve does not reward fitting the query
the ranking was computed on, and the test images stay untouched.

The suggestion is the k with the lowest mean selection loss. It counts as helping only when its
per-image selection losses are lower than with nothing removed by a one-sided paired t-test,
Holm-corrected over every k tried (picking the lowest of many k must not pass as a finding);
its uncertainty is the spread of that arg-min over bootstrap resamples of the selection images.
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
CONTROLS = 10  # random sets of each size
BOOTSTRAP = 1000  # resamples of the selection images for the arg-min's uncertainty
NO_HELP = "removing images does not help this model"


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
          on_progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """The curve of a ranking (`ranked`: sample_id, most harmful first, e.g. methods.rank) and
    the suggestion. One row per retrained model: k, kind ("top" or "random"), draw (0 for the
    top-k, 1..R for the random sets), the columns of counterfactual.outcomes (selection_loss,
    selection_error, query_loss, …) and the per-image selection losses and correctness."""
    ids = check_curve(run, ranked, mode, controls)
    ks = sizes(len(ids), ks)
    plan = [("top", k, 0, ids[:k]) for k in ks]
    for k in ks[1:]:
        plan += [("random", k, d + 1, sid) for d, sid in
                 enumerate(random_removals(run, k, controls, seed + k))]
    rows = outcomes(run, [removed for *_, removed in plan], mode, exclude, on_progress,
                    phase="curve", measure=lambda theta: per_image(run, theta))
    frame = pd.concat([pd.DataFrame([(kind, k, d) for kind, k, d, _ in plan],
                                    columns=["kind", "k", "draw"]), rows], axis=1)
    top = frame[frame.kind == "top"]
    found = suggest(top.k.to_numpy(), np.stack(top.selection_losses.to_list()), seed=seed)
    at = frame[(frame.kind == "random") & (frame.k == found["k"])]
    found.update(mode=mode, controls=controls,
                 p_random=compare.empirical_p(found["loss"], at.selection_loss)
                 if found["k"] else float("nan"))
    return frame, found


def suggest(ks: np.ndarray, losses: np.ndarray, alpha: float = compare.ALPHA,
            resamples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """The suggestion from per-image selection losses (`losses`: one row per k of `ks`, k = 0
    first; one column per selection image). best_k: the k of the lowest mean loss; helps: it is
    above 0 and its losses are below those of k = 0 by a one-sided paired t-test over the
    images, Holm-corrected over every k > 0; k: best_k if it helps, else 0. Uncertainty: the arg-
    min over `resamples` bootstrap resamples of the images (share picking best_k, 5–95 %
    range of the picked k)."""
    ks, losses = np.asarray(ks), np.asarray(losses, dtype=float)
    if ks[0] != 0 or len(ks) != len(losses):
        raise ValueError("give one row of losses per k, k = 0 first")
    mean = losses.mean(1)
    best = int(np.argmin(mean))
    p = [np.nan] + [paired_p(row, losses[0]) for row in losses[1:]]
    p_holm = compare.holm(p)
    helps = best > 0 and bool(p_holm[best] < alpha)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, losses.shape[1], (resamples, losses.shape[1]))
    picked = ks[np.argmin(losses[:, pick].mean(2), axis=0)]
    result = {"k": int(ks[best]) if helps else 0, "best_k": int(ks[best]), "helps": helps,
              "loss": float(mean[best]), "loss_none": float(mean[0]),
              "p": float(p[best]) if best else float("nan"),
              "p_holm": float(p_holm[best]) if best else float("nan"),
              "tests": len(ks) - 1, "n_selection": int(losses.shape[1]),
              "stability": float(np.mean(picked == ks[best])),
              "k_low": int(np.percentile(picked, 5, method="lower")),
              "k_high": int(np.percentile(picked, 95, method="higher"))}
    result["sentence"] = in_words(result)
    return result


def paired_p(losses: np.ndarray, none: np.ndarray) -> float:
    """One-sided paired t-test: are the per-image losses below those with nothing removed?
    1.0 when nothing changed."""
    if np.allclose(losses, none, rtol=0, atol=1e-12):
        return 1.0
    return float(stats.ttest_rel(losses, none, alternative="less").pvalue)


def in_words(s: dict) -> str:
    """The suggestion as one or two sentences."""
    spread = (f"Resampling the {s['n_selection']} selection images picks k = {s['best_k']} "
              f"{s['stability']:.0%} of the time (90 % of picks between {s['k_low']} and "
              f"{s['k_high']}).")
    if not s["helps"]:
        lowest = ("removing nothing has the lowest selection loss" if s["best_k"] == 0 else
                  f"the lowest selection loss, at k = {s['best_k']} ({s['loss']:.4f} against "
                  f"{s['loss_none']:.4f}), is not below removing nothing by a paired t-test "
                  f"over the images (Holm-corrected over the {s['tests']} sizes tried: "
                  f"p = {s['p_holm']:.2g})")
        return f"{NO_HELP[0].upper()}{NO_HELP[1:]}: {lowest}. {spread}"
    return (f"Suggested: remove the top {s['k']}. The selection loss falls from "
            f"{s['loss_none']:.4f} (nothing removed) to {s['loss']:.4f} (one-sided paired "
            f"t-test over the images, Holm-corrected over the {s['tests']} sizes tried: "
            f"p = {s['p_holm']:.2g}). {spread}")


def band(frame: pd.DataFrame) -> pd.DataFrame:
    """Per k: the top-k's selection loss and error, and the random sets' mean, lowest and
    highest (the band a ranking must fall below)."""
    top = frame[frame.kind == "top"].set_index("k")[["selection_loss", "selection_error"]]
    rand = frame[frame.kind == "random"].groupby("k")[["selection_loss", "selection_error"]]
    out = top.join(rand.mean().add_prefix("random_mean_"), how="left")
    out = out.join(rand.min().add_prefix("random_low_")).join(rand.max().add_prefix("random_high_"))
    return out.reset_index()


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """The curve without its per-image columns (for a CSV)."""
    return frame.drop(columns=["selection_losses", "selection_right"])

