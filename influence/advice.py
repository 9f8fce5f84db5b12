"""What the app recommends about fixing labels, and the bookkeeping of fixes. No UI, no storage:
the app's pages and the benchmarks use the same functions.

Fixing a label instead of removing the image: two sources suggest a label. SGD-influence's
relabel effects (influence.relabel, from the same retrace as its removal scores) give each image
its best other label, argmin_c L̂_{j→c}, and the estimated effect of that fix. The label check
(confident learning on the run's own model, ranking "confident-learning") gives the label a
model that never saw the image predicts. Where the label check has been computed, its label is
the one suggested: on planted label noise it was right far more often
(benchmarks/results/noisy-fix.md), and where the check keeps the given label, the suggested
action is removal. The two are marked where they agree.

What the app recommends (recommend), each action gated by a check computed on the user's own
run and given with its reason in one plain sentence:

* fixes: the label check's *flagged* images whose suggested label has a probability of at
  least SURE, each to that label, to be accepted or rejected one at a time; the other flagged
  images (remove_flagged) look wrong but the check is unsure of the right label: to remove or
  to look at. Fixing every flagged image broke too many right labels on planted look-alike
  noise; SURE was chosen held out (benchmarks/results/advice-policy.md). SGD-influence's best
  other label is never the default: on planted look-alike noise it was right about as often
  as chance.
* removal by an influence ranking: only when that ranking's trust check on this run passes
  (trust_verdict): its estimates of random groups correlate with real retraining (group
  Spearman > 0, one-sided p < 0.05) and its estimate of its own top sets has the right sign and
  lies within TRUST_FACTOR of the retrained change. Otherwise the ranking does not predict
  retraining on this data and only the label check's fixes are recommended.
* how many to remove: only when the k-curve's suggestion beats random sets of the same size on
  the selection part's error and loss (influence.kcurve.suggest).

Besides: which class pairs the label check finds confused (confused_pairs), whether the model
learned (learned) and whether validation loss rose at the end of training (overfitting).

The bookkeeping: "Fix top K" and the fix view's edits as ticks (removals) and fixes (sample id →
new label, a class name), the labels in use in a run, what a round changed per class, the
fixes as a CSV, and the demo's counts of flipped images removed and fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from datasets import ImageSet

CHECK = "confident-learning"  # the ranking that holds the label check of the training images
ACTIONS = ("keep", "remove", "fix")  # what the fix view offers per image
TRUST_FACTOR = 2.0  # a top set's summed estimate must lie within this factor of the retrained
# change (either way) for the trust check to pass
ALPHA = 0.05  # the level of the group correlation's one-sided test
SURE = 0.95  # a flagged image is fixed by default only when its suggested label has at least
# this probability (label check, out of sample); the other flagged images are to be removed or
# looked at. Chosen held out on planted noise: benchmarks/results/advice-policy.md


# --- the trust check in one verdict -----------------------------------------------------------
COLOURS = {"pass": "green", "unsure": "orange", "fail": "red", "none": "grey"}
ICONS = {"pass": ":material/verified:", "unsure": ":material/help:", "fail": ":material/error:",
         "none": ":material/info:"}


@dataclass(frozen=True)
class TrustVerdict:
    """What a ranking's trust check (influence.trust) means for the user."""
    level: str  # "pass" | "unsure" | "fail" | "none"
    sentence: str  # one plain sentence a non-expert can act on
    group_spearman: float | None = None
    group_p: float | None = None  # one-sided, H1: rho > 0
    top_ratio: float | None = None  # summed estimate of the top set / retrained change (the
    # top set furthest from agreeing, when several were retrained)
    shown_estimate: float | None = None  # that set's summed estimate; None where it is
    # impossible (a predicted drop larger than the loss itself)
    top_size: int | None = None  # the images in that top set
    top_actual: float | None = None  # its retrained change of the query loss

    @property
    def colour(self) -> str:
        return COLOURS[self.level]

    @property
    def icon(self) -> str:
        return ICONS[self.level]

    @property
    def passes(self) -> bool:
        return self.level == "pass"


def possible_estimate(estimate: float | None, loss: float | None) -> float | None:
    """An estimated change of a loss as it may be shown: None where it is no number or where it
    predicts a drop larger than the loss itself (a loss cannot fall below 0)."""
    if estimate is None or not math.isfinite(float(estimate)):
        return None
    if loss is not None and math.isfinite(float(loss)) and -float(estimate) > float(loss):
        return None
    return float(estimate)


def one_sided_p(rho: float, p_two_sided: float) -> float:
    """The one-sided p (H1: rho > 0) from a two-sided test of a symmetric statistic."""
    return p_two_sided / 2 if rho > 0 else 1 - p_two_sided / 2


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _ratio_off(ratio: float) -> float:
    """How far a ratio estimate / actual lies from 1 on a log scale (inf: wrong sign or none)."""
    return abs(math.log(ratio)) if ratio > 0 and math.isfinite(ratio) else math.inf


def trust_verdict(trust: dict | None, loss: float | None = None, factor: float = TRUST_FACTOR
                  ) -> TrustVerdict:
    """The verdict of a trust check (influence.trust.retraining_agreement / of_ranking, or its
    kept figures): pass only when the group Spearman correlation is significantly above 0
    (one-sided p < ALPHA) and every retrained top set's summed estimate has the sign of the
    retrained change and lies within `factor` of it (and is possible: not a drop larger than
    `loss`, the query loss, by default the check's own); fail when the correlation is not
    significant or a top set's sign is wrong; unsure when significant but a magnitude is off
    or no top set was retrained; none without a check."""
    if not trust or "group_spearman" not in trust:  # no check, or too few groups retrained
        return TrustVerdict("none", "This ranking has not been checked against real retraining "
                            "yet: run the trust check before removing images by it.")
    rho = _number(trust.get("group_spearman"))
    p = _number(trust.get("group_p_greater"))
    if p is None and rho is not None and _number(trust.get("group_p_value")) is not None:
        p = one_sided_p(rho, float(trust["group_p_value"]))
    loss = _number(loss if loss is not None else trust.get("query_loss"))
    figures = dict(group_spearman=rho, group_p=p)
    top = trust.get("top_rows")
    top = pd.DataFrame(top) if top is not None else pd.DataFrame(
        columns=["size", "estimate", "actual"])
    worst = None
    for row in top.itertuples():
        ratio = row.estimate / row.actual if row.actual != 0 else math.inf
        off = _ratio_off(ratio) if possible_estimate(row.estimate, loss) is not None else math.inf
        if worst is None or off > worst[0] or (off == worst[0] and ratio < worst[1]):
            worst = (off, ratio, row)
    if worst is not None:
        off, ratio, row = worst
        figures.update(top_ratio=float(ratio) if math.isfinite(ratio) else None,
                       shown_estimate=possible_estimate(row.estimate, loss),
                       top_size=int(row.size), top_actual=float(row.actual))
    if rho is None or p is None or rho <= 0 or p >= ALPHA:
        said = "not computed" if rho is None else f"{rho:.2f}, p = {p:.2g}"
        return TrustVerdict("fail", "Do not remove images by this ranking: on your data its "
                            "estimates do not predict what retraining does (group correlation "
                            f"{said}). Use the label check's fixes instead.", **figures)
    if worst is None:
        return TrustVerdict("unsure", "This ranking orders groups of images like real "
                            f"retraining (group correlation {rho:.2f}, p = {p:.2g}), but its top "
                            "images were not retrained, so the size of its estimates is "
                            "unchecked: run the trust check again before removing by it.",
                            **figures)
    wrong_sign = [r for r in top.itertuples()
                  if np.sign(r.estimate) != np.sign(r.actual) or r.actual == 0]
    if wrong_sign:
        r = wrong_sign[0]
        return TrustVerdict("fail", f"Do not remove images by this ranking: removing its top "
                            f"{int(r.size)} was estimated to {_direction(r.estimate)} the "
                            f"validation loss, but retraining without them "
                            f"{_direction(r.actual, past=True)} it. Use the label check's "
                            "fixes instead.", **figures)
    if worst[0] > math.log(factor):
        return TrustVerdict("unsure", "This ranking points the right way on your data (group "
                            f"correlation {rho:.2f}, p = {p:.2g}) but misjudges how much: its "
                            f"top {figures['top_size']} were estimated to change the validation "
                            f"loss by {_amount(figures['shown_estimate'])}, retraining changed "
                            f"it by {figures['top_actual']:+.3g}. Prefer the label check's fixes; "
                            "remove by it only with care.", **figures)
    return TrustVerdict("pass", "This ranking predicts real retraining on your data (group "
                        f"correlation {rho:.2f}, p = {p:.2g}; its top sets' estimates within "
                        f"{factor:g}× of the retrained change): removing its top images is "
                        "supported.", **figures)


def _direction(change: float, past: bool = False) -> str:
    if change == 0:
        return "left" if past else "leave"
    word = "lower" if change < 0 else "raise"
    return word + ("ed" if past and word.endswith("r") else "d" if past else "")


def _amount(estimate: float | None) -> str:
    return "an impossible amount (more than the loss itself)" if estimate is None \
        else f"{estimate:+.3g}"


# --- what to do --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    """The default actions on a run and why (recommend)."""
    fixes: dict[str, str]  # sample id → the label check's suggested label, flagged images only
    remove: list[str]  # empty unless the ranking's trust verdict passes
    how_many: int | None  # the k-curve's passing size, or None
    reasons: list[str] = field(default_factory=list)  # one plain sentence per action or not
    trust: TrustVerdict | None = None  # the ranking's trust verdict
    remove_flagged: dict[str, str] = field(default_factory=dict)  # sample id → suggested
    # label: flagged images whose suggested label the check is unsure of (suggested_p < SURE):
    # to remove, or to look at one by one


def given_labels(check: pd.DataFrame) -> pd.Series | None:
    """The given label per row of a label-check frame (column label or "given label"), as
    text; None where the frame has neither."""
    for column in ("label", "given label", "given_label"):
        if column in check.columns:
            return check[column].astype(str)
    return None


def check_fixes(check: pd.DataFrame | None) -> dict[str, str]:
    """{sample id: suggested label} of the label check's flagged images whose suggested label
    is another than the given one (where the frame holds the given label)."""
    if check is None or not len(check):
        return {}
    flagged = check.flagged.astype(bool) & (check.suggested_label.astype(str) != "") \
        & check.suggested_label.notna()
    given = given_labels(check)
    if given is not None:
        flagged &= check.suggested_label.astype(str) != given
    rows = check[flagged]
    return dict(zip(rows.sample_id.astype(str), rows.suggested_label.astype(str)))


def sure_fixes(check: pd.DataFrame | None, sure: float = SURE
               ) -> tuple[dict[str, str], dict[str, str]]:
    """check_fixes split in two: the flagged images whose suggested label has a probability of
    at least `sure` (column suggested_p; none without it), and the others."""
    fixes = check_fixes(check)
    if not fixes:
        return {}, {}
    p = (check.set_index(check.sample_id.astype(str)).suggested_p
         if "suggested_p" in check.columns else pd.Series(dtype=float))
    confident = {sid for sid in fixes if sid in p.index and float(p.loc[sid]) >= sure}
    return ({sid: v for sid, v in fixes.items() if sid in confident},
            {sid: v for sid, v in fixes.items() if sid not in confident})


def recommend(check: pd.DataFrame | None, ranked: pd.DataFrame | None, trust: dict | None,
              curve: dict | None = None, loss: float | None = None, sure: float = SURE
              ) -> Recommendation:
    """The default recommendation on a run. `check`: the label check of the training images
    (sample_id, flagged, suggested_label, and label or "given label"); `ranked`: an influence
    ranking (sample_id, influence, most harmful first); `trust`: its trust check; `curve`: the
    k-curve's suggestion of that ranking (influence.kcurve.suggest); `loss`: the query loss
    (for impossible estimates).
    * fixes: the images the label check flags whose suggested label has a probability of at
      least `sure`, each to that label;
    * remove_flagged: the other flagged images with another suggested label: to remove, or to
      look at one by one;
    * how_many: the curve's size when it beats random sets of that size (kcurve), else None;
    * remove: the ranking's top how_many, less the images fixed, only when the trust check
      passes (trust_verdict) and how_many is known; else nothing.
    Each decision with its reason in `reasons`."""
    reasons = []
    fixes, unsure = sure_fixes(check, sure)
    if check is None:
        reasons.append("No label check yet: run it to find images whose label looks wrong.")
    elif fixes or unsure:
        n, m = len(fixes), len(unsure)
        reasons.append(
            (f"{n} flagged image{'s are' if n != 1 else ' is'} fixed to the label the check "
             f"suggests: the check is sure (a model that never saw {'them' if n != 1 else 'it'} "
             f"gives that label a probability of at least {sure:.0%})" if n else
             "No flagged image is fixed by default: the check is sure of no suggested label")
            + (f"; {m} more look{'s' * (m == 1)} wrong but the check is unsure of the right "
               f"label: remove {'them' if m != 1 else 'it'} or look at each." if m else "."))
    else:
        reasons.append("The label check flags no image: no label needs fixing.")
    verdict = trust_verdict(trust, loss) if ranked is not None else None
    how_many = None
    if curve is not None and curve.get("helps") and int(curve.get("k") or 0) > 0:
        how_many = int(curve["k"])
    remove: list[str] = []
    if ranked is None:
        reasons.append("No influence ranking: nothing is recommended for removal.")
    elif not verdict.passes:  # how many does not matter: the ranking is not to be followed
        reasons.append(f"No removal is recommended. {verdict.sentence}")
    elif curve is None:
        reasons.append("How many to remove has not been checked: run it before removing "
                       "images.")
    elif how_many is None:
        reasons.append("Remove no images by count: removing the ranking's top images did not "
                       "do clearly better than removing as many random images on the held-out "
                       "selection images.")
    else:
        top = [str(s) for s in ranked.sample_id.head(how_many)]
        remove = [sid for sid in top if sid not in fixes]
        reasons.append(f"Remove the ranking's top {how_many}"
                       + (f" ({how_many - len(remove)} of them are fixed instead)"
                          if len(remove) < how_many else "")
                       + ": its trust check passes on your data and removing them beat "
                       f"removing {how_many} random images on the held-out selection images."
                       + _holds(curve, how_many))
    return Recommendation(fixes, remove, how_many, reasons, verdict, unsure)


def _holds(curve: dict, k: int) -> str:
    """What the suggested set holds: how many of its images the label check flags."""
    if curve.get("flagged_in_set") is None:
        return ""
    random = curve.get("random_flagged")
    return (f" {curve['flagged_in_set']} of these {k} are also flagged by the label check"
            + (f" ({random:.1f} in a random set of {k} on average)." if random is not None
               else "."))


# --- what the label check and the training log say --------------------------------------------
def confused_pairs(check: pd.DataFrame) -> pd.DataFrame:
    """Among the label check's flagged images with another suggested label: per (given label,
    suggested label) pair, the count and a sentence ("about 23 images labelled 1 look like
    7"), most frequent first."""
    columns = ["given", "looks_like", "count", "sentence"]
    given = given_labels(check) if check is not None else None
    if given is None or not len(check):
        return pd.DataFrame(columns=columns)
    rows = check.assign(given=given, looks_like=check.suggested_label.astype(str))
    rows = rows[rows.flagged.astype(bool) & (rows.looks_like != rows.given)
                & check.suggested_label.notna()]
    counts = rows.groupby(["given", "looks_like"]).size().rename("count").reset_index()
    counts = counts.sort_values(["count", "given", "looks_like"], ascending=[False, True, True],
                                kind="stable").reset_index(drop=True)
    counts["sentence"] = [
        f"{'about ' if n > 1 else ''}{n} image{'s' * (n != 1)} labelled {g} look"
        f"{'s' * (n == 1)} like {c}" for g, c, n in zip(counts.given, counts.looks_like,
                                                        counts["count"])]
    return counts[columns]


def epochs(log: pd.DataFrame) -> pd.DataFrame:
    """The training log's epoch-end rows (epoch, val_loss, val_accuracy), one per epoch."""
    if log is None or "val_loss" not in log.columns:
        return pd.DataFrame(columns=["epoch", "val_loss", "val_accuracy"])
    rows = log.dropna(subset=["val_loss"])
    return rows.groupby("epoch", as_index=False).last()[["epoch", "val_loss", "val_accuracy"]]


def overfitting(log: pd.DataFrame, patience: int = 3) -> dict | None:
    """From a training log (influence.run_folder.TrainingLog: validation loss on each epoch's
    last row): the epoch of the lowest validation loss and how many epochs the loss has stayed
    above it since, with a sentence offering fewer epochs; None when the last epoch is within
    `patience` epochs of the lowest loss (not rising for that long)."""
    ends = epochs(log)
    if len(ends) < 2:
        return None
    best = ends.loc[ends.val_loss.idxmin()]
    last = ends.iloc[-1]
    since = int(last.epoch - best.epoch)
    if since < patience:
        return None
    return {"best_epoch": int(best.epoch), "best_val_loss": float(best.val_loss),
            "best_val_accuracy": float(best.val_accuracy), "epochs": int(last.epoch),
            "final_val_loss": float(last.val_loss), "final_val_accuracy": float(last.val_accuracy),
            "epochs_since_best": since,
            "sentence": f"Validation loss was lowest after epoch {int(best.epoch)} "
                        f"({best.val_loss:.3f}) and has been higher for the {since} epochs since "
                        f"({last.val_loss:.3f} at the end): the model is starting to memorise "
                        f"its training images. Training again with {int(best.epoch)} epochs "
                        "would likely give a better model; this run is kept as it was trained "
                        "and is the one scored."}


def learned(log: pd.DataFrame, classes, n_val: int | None = None) -> str:
    """Did the model learn? Its final validation accuracy against chance (1 / the number of
    classes; `classes`: the class names or their count), in one sentence. With `n_val`
    validation images, "learned" needs a one-sided binomial test against chance at ALPHA;
    without, an accuracy of at least twice chance."""
    count = classes if isinstance(classes, (int, np.integer)) else len(list(classes))
    chance = 1 / max(int(count), 1)
    ends = epochs(log)
    if not len(ends) or pd.isna(ends.val_accuracy.iloc[-1]):
        return "There are no validation images, so whether the model learned cannot be said."
    accuracy = float(ends.val_accuracy.iloc[-1])
    if n_val:
        right = int(round(accuracy * n_val))
        ok = stats.binomtest(right, int(n_val), chance, alternative="greater").pvalue < ALPHA
    else:
        ok = accuracy >= 2 * chance
    said = (f"it gets {accuracy:.0%} of the validation images right, against {chance:.0%} by "
            "guessing")
    if ok:
        return f"The model learned: {said}."
    return (f"The model did not clearly learn: {said}. Train longer, with another learning "
            "rate, or check the labels before trusting its rankings.")


# --- suggested labels -------------------------------------------------------------------------
def suggestions(ids, labels, effects: pd.DataFrame | None, check: pd.DataFrame | None
                ) -> pd.DataFrame:
    """Per sample id (index, in the order of `ids`; `labels`: their labels in use):
    best_label and effect_best (SGD-influence's best other label and its estimated effect),
    check_label (the label check's label), agree (both name the same other label),
    suggested (the label to fix to: the check's where it gives another label, else, without
    the check, SGD-influence's), suggested_effect (SGD-influence's estimate for it) and action
    (what "Fix top K" does: fix, or remove where the check keeps the given label)."""
    frame = pd.DataFrame({"label": np.asarray(labels, dtype=str)}, index=pd.Index(ids))
    if effects is not None:
        e = effects.set_index("sample_id").reindex(frame.index)
        frame["best_label"] = e.best_label.fillna("").astype(str)
        frame["effect_best"] = e.effect_best
    else:
        frame["best_label"], frame["effect_best"], e = "", np.nan, None
    frame["check_label"] = "" if check is None else check.set_index("sample_id").reindex(
        frame.index).suggested_label.fillna("").astype(str)
    other = (frame.check_label != "") & (frame.check_label != frame.label)
    frame["agree"] = other & (frame.check_label == frame.best_label)
    checked = frame.check_label != ""
    frame["suggested"] = np.where(other, frame.check_label,
                                  np.where(checked, "", frame.best_label))
    frame["suggested_effect"] = effect_of(e, frame.suggested)
    frame["action"] = np.where(frame.suggested != "", "fix", "remove")
    return frame


def effect_of(effects: pd.DataFrame | None, labels: pd.Series) -> np.ndarray:
    """SGD-influence's estimated effect of giving each image (index of `labels`) the label in
    `labels` (NaN where there is no label or no effect of it): `effects` indexed by sample id,
    with the effect_to_<class> columns of influence.relabel.table."""
    out = np.full(len(labels), np.nan)
    if effects is None:
        return out
    effects = effects.reindex(labels.index)
    for label in set(labels) - {""}:
        column = f"effect_to_{label}"
        if column in effects.columns:
            at = (labels == label).to_numpy()
            out[at] = effects[column].to_numpy()[at]
    return out


def fix_top(ids, suggested: pd.DataFrame, ticks: set[str], fixes: dict[str, str]
            ) -> tuple[set[str], dict[str, str]]:
    """"Fix top K": each of `ids` fixed to its suggested label, or ticked for removal where
    there is none (the label check keeps its label)."""
    ticks, fixes = set(ticks), dict(fixes)
    for sid in ids:
        row = suggested.loc[sid]
        if row.action == "fix":
            fixes[sid] = row.suggested
            ticks.discard(sid)
        else:
            ticks.add(sid)
            fixes.pop(sid, None)
    return ticks, fixes


def apply_edits(edited: pd.DataFrame, shown: pd.DataFrame, ticks: set[str],
                fixes: dict[str, str]) -> tuple[set[str], dict[str, str]]:
    """The rows of the fix view as edited (columns sample id, given label, action, fix to) over
    the rows as shown: remove ticks the image, fix gives it the label in "fix to" (choosing
    another label on a kept row fixes it; a fix to its own label keeps it), keep does neither."""
    ticks, fixes = set(ticks), dict(fixes)
    before = shown.set_index("sample id")
    for _, row in edited.iterrows():
        sid, action, label = row["sample id"], row["action"], str(row["fix to"])
        if action == "keep" and label != str(before.loc[sid, "fix to"]):
            action = "fix"
        if action == "fix" and label == str(row["given label"]):
            action = "keep"
        ticks.discard(sid)
        fixes.pop(sid, None)
        if action == "remove":
            ticks.add(sid)
        elif action == "fix":
            fixes[sid] = label
    return ticks, fixes


# --- what a round changed ---------------------------------------------------------------------
def labels_in_use(data: ImageSet, position: dict[str, int], config: dict) -> np.ndarray:
    """Every image's label (class index) in a run: the data set's, with the run's fixes."""
    labels = data.labels.copy()
    for sid, (c, _) in ((config or {}).get("fixes") or {}).items():
        labels[position[sid]] = c
    return labels


def relabelled(data: ImageSet, position: dict[str, int], config: dict) -> ImageSet:
    """The data set with a run's fixes applied (for the cleaned ZIP: fixed images go to the
    folder of their new class)."""
    return data.with_labels(labels_in_use(data, position, config), "labels fixed")


def per_class(classes, old: dict[str, str], removed: list[str], fixes: dict[str, str]
              ) -> pd.DataFrame:
    """Per class: training images removed, fixed away from it, fixed to it, and the change of
    its count. `old`: sample id → label in use before, for every removed or fixed id."""
    counts = pd.DataFrame(0, index=pd.Index([str(c) for c in classes], name="class"),
                          columns=["removed", "fixed away", "fixed to it"])
    for sid in removed:
        counts.loc[old[sid], "removed"] += 1
    for sid, new in fixes.items():
        counts.loc[old[sid], "fixed away"] += 1
        counts.loc[str(new), "fixed to it"] += 1
    counts["change"] = counts["fixed to it"] - counts["fixed away"] - counts["removed"]
    return counts[counts.drop(columns="change").sum(axis=1) > 0].reset_index()


def fixes_csv(fixes: dict[str, str], old: dict[str, str], effects: pd.DataFrame | None
              ) -> pd.DataFrame:
    """sample_id, old_label, new_label, estimated_effect (SGD-influence's estimate of the
    change of validation loss; empty where it has none)."""
    new = pd.Series([str(v) for v in fixes.values()], index=list(fixes), dtype=object)
    return pd.DataFrame({
        "sample_id": list(fixes), "old_label": [old[sid] for sid in fixes],
        "new_label": new.to_numpy(),
        "estimated_effect": effect_of(None if effects is None else
                                      effects.set_index("sample_id"), new)},
        columns=["sample_id", "old_label", "new_label", "estimated_effect"])


def demo_counts(flipped: dict[str, str], removed, fixes: dict[str, str]) -> dict[str, int]:
    """Demo: the flipped images removed, fixed, and fixed to their true label."""
    return {"removed": len(set(removed) & flipped.keys()),
            "fixed": len(fixes.keys() & flipped.keys()),
            "fixed_true": sum(str(flipped[sid]) == str(new) for sid, new in fixes.items()
                              if sid in flipped)}


def estimated_total(fixes: dict[str, str], effects: pd.DataFrame | None) -> float:
    """SGD-influence's summed estimate of the round's fixes (0 without fixes; NaN where one of
    them has no estimate)."""
    if not fixes:
        return 0.0
    return float(fixes_csv(fixes, {sid: "" for sid in fixes}, effects).estimated_effect.sum(
        min_count=len(fixes)))


def old_labels(data: ImageSet, position: dict[str, int], config: dict, ids) -> dict[str, str]:
    """Sample id → its label (class name) in the run with this config."""
    labels = labels_in_use(data, position, config)
    return {sid: str(data.classes[labels[position[sid]]]) for sid in ids}
