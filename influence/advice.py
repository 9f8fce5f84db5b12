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

The bookkeeping: "Fix top K" and the fix view's edits as ticks (removals) and fixes (sample id →
new label, a class name), the labels in use in a run, what a round changed per class, the
fixes as a CSV, and the demo's counts of flipped images removed and fixed.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from datasets import ImageSet

CHECK = "confident-learning"  # the ranking that holds the label check of the training images
ACTIONS = ("keep", "remove", "fix")  # what the fix view offers per image


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
