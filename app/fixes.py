"""Fixing labels instead of removing images: the suggested label of every training image, the
session's fixes (sample id → new label) next to its ticks (removals), and page 3's "fix labels"
view. Page 4 retrains with both (influence.cleaning.clean with fixes) and exports the fixes.

Two sources suggest a label. SGD-influence's relabel effects (influence.relabel, from the same
retrace as its removal scores) give each image its best other label, argmin_c L̂_{j→c}, and the
estimated effect of that fix. The label check (confident learning on the run's own model,
ranking "confident-learning") gives the label a model that never saw the image predicts. Where
the label check has been computed, its label is the one suggested: on planted label noise it
was right far more often (benchmarks/results/noisy-fix.md), and where the check keeps the given
label, the suggested action is removal. The two are marked where they agree.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from datasets import ImageSet
from influence import methods, relabel

from . import images, session
from .services.store import RELABEL

CHECK = "confident-learning"  # the ranking that holds the label check of the training images
ACTIONS = ("keep", "remove", "fix")


# --- the session's fixes ----------------------------------------------------------------------
def stored(run_id: str | None) -> dict[str, str]:
    """Sample id → new label (a class name) this session chose for a run."""
    return dict(session.state().setdefault("fixes", {}).get(run_id or "", {}))


def current(run_id: str | None, ticks: set[str]) -> dict[str, str]:
    """The fixes of a run that are not ticked for removal too (an image is removed or fixed:
    a tick on page 3's ranking wins)."""
    return {sid: label for sid, label in stored(run_id).items() if sid not in ticks}


def save(run_id: str, fixes: dict[str, str], ticks: set[str] | None = None) -> None:
    """Keep a run's fixes (and its ticks, when given) in the session."""
    session.state().setdefault("fixes", {})[run_id] = dict(sorted(fixes.items()))
    if ticks is not None:
        session.state()["ticks"][run_id] = sorted(ticks)
    session.save()


# --- suggested labels -------------------------------------------------------------------------
def relabel_table(run_id: str, method: str | None) -> tuple[str | None, pd.DataFrame | None]:
    """The relabel effects kept with a run's SGD-influence ranking: of `method` when it has
    them, else of any SGD-influence ranking of the run. (method, table) or (None, None)."""
    info = session.store().score_info(run_id)
    relabelling = methods.keys(relabels=True)
    for key in ([method] if method in relabelling else []) + list(relabelling):
        if (info.get(key) or {}).get("relabel"):
            return key, session._table(session.store().run_folder(run_id) /
                                       info[key]["relabel"], RELABEL)
    return None, None


def label_check(run_id: str) -> pd.DataFrame | None:
    """The label check of the training images, when it has been computed for this run."""
    if CHECK not in session.store().score_info(run_id):
        return None
    return session.scores(run_id, CHECK)


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


def demo_words(flipped: dict[str, str], removed, fixes: dict[str, str]) -> str:
    """E.g. "3 of your 5 fixed images are flipped ones, 2 of them fixed to their true label"."""
    n = demo_counts(flipped, removed, fixes)
    return (f"**{n['fixed']}** of your {len(fixes)} fixed images are flipped ones, "
            f"**{n['fixed_true']}** of them fixed to their true label")


def round_words(k: int, f: int) -> str:
    """What a round does, e.g. "Removing the 3 ticked images and fixing 2 labels"."""
    parts = ([f"removing the {k} ticked image{'s' * (k != 1)}"] if k else []) + \
        ([f"fixing {f} label{'s' * (f != 1)}"] if f else [])
    return " and ".join(parts).capitalize()


# --- page 3's view ----------------------------------------------------------------------------
def view(run: dict, method: str, ranked: pd.DataFrame, data: ImageSet,
         position: dict[str, int], flipped: dict[str, str], top_k: int, per_page: int,
         filters: str = "") -> None:
    """The "fix labels" view of page 3 over `ranked` (the ranking as filtered there, with its
    rank and label columns): per image SGD-influence's best other label and its effect next to
    removal's, the label check's label and whether the two agree, and per row keep / remove /
    fix → label; "Fix top K to their suggested labels"."""
    ticks = session.ticks()
    fixes = current(run["id"], ticks)
    source, effects = relabel_table(run["id"], method)
    check = label_check(run["id"])
    with st.expander(f"Fix labels instead of removing — {len(fixes)} fixed",
                     expanded=bool(fixes)):
        if effects is None and check is None:
            st.info("No label to suggest yet: compute SGD-influence (exact or fast), which "
                    "also estimates the effect of every relabelling, or the label check "
                    "(\"likely wrong label\").", icon=":material/info:")
            return
        st.caption(
            "For every image: the other label SGD-influence estimates would lower the "
            "validation loss most, and by how much, next to what removing it does"
            + (f" (from the {'fast' if source == 'sgd-last' else 'exact'} SGD-influence)"
               if effects is not None else "")
            + ". " + ("The label check's label is suggested where it gives another one; where "
                      "it keeps the given label, the suggestion is to remove the image."
                      if check is not None else
                      "Compute the label check (\"likely wrong label\") too: its label is "
                      "suggested where present, because SGD-influence's best label was right "
                      "for far fewer flipped images, and fixing many images to it at once "
                      "can break the model (benchmarks/results/noisy-fix.md)."))
        suggested = suggestions(ranked.sample_id, ranked.label, effects, check)
        c1, c2 = st.columns(2, vertical_alignment="bottom")
        version = st.session_state.setdefault("fix_version", 0)
        if c1.button(f"Fix top {top_k} to their suggested labels",
                     icon=":material/edit_note:"):
            ticks, fixes = fix_top(list(ranked.sample_id.head(int(top_k))), suggested, ticks,
                                   fixes)
            save(run["id"], fixes, ticks)
            st.session_state.fix_version += 1
            st.session_state.tick_version = st.session_state.get("tick_version", 0) + 1
            st.rerun()
        if c2.button("Clear all fixes", icon=":material/undo:", disabled=not fixes):
            save(run["id"], {})
            st.session_state.fix_version += 1
            st.rerun()
        pages = max(1, -(-len(ranked) // per_page))
        page = st.pagination(pages, key=f"fix-page-{run['id']}-{filters}")
        part = ranked.iloc[(page - 1) * per_page: page * per_page]
        shown = rows(part, suggested.loc[part.sample_id], ticks, fixes, data, position, flipped)
        columns = {
            "action": st.column_config.SelectboxColumn("Action", options=ACTIONS,
                                                       required=True, width=80),
            "fix to": st.column_config.SelectboxColumn(
                "Fix to", options=[str(c) for c in data.classes], required=True, width=70,
                help="The label a fix gives; defaults to the suggested one."),
            "image": st.column_config.ImageColumn("Image", width=68),
            "agree": st.column_config.TextColumn("Both suggest", width=90, help=(
                "✓ where SGD-influence's best label and the label check's label agree.")),
            "what it does": st.column_config.TextColumn("What fixing or removing does",
                                                        width=420),
        }
        edited = st.data_editor(
            shown, hide_index=True, column_config=columns, row_height=44,
            disabled=[c for c in shown.columns if c not in ("action", "fix to")],
            key=f"fix-editor-{run['id']}-{filters}-{page}-{version}")
        new_ticks, new_fixes = apply_edits(edited, shown, ticks, fixes)
        if (new_ticks, new_fixes) != (ticks, fixes):
            save(run["id"], new_fixes, new_ticks)
            st.session_state.tick_version = st.session_state.get("tick_version", 0) + 1
            st.rerun()


def rows(part: pd.DataFrame, suggested: pd.DataFrame, ticks: set[str], fixes: dict[str, str],
         data: ImageSet, position: dict[str, int], flipped: dict[str, str]) -> pd.DataFrame:
    """The fix view's rows for one page of the ranking."""
    ids = list(part.sample_id)
    action = ["remove" if sid in ticks else "fix" if sid in fixes else "keep" for sid in ids]
    fix_to = [fixes.get(sid) or s or g for sid, s, g in
              zip(ids, suggested.suggested, suggested.label)]
    said = []
    for sid, (_, s), score in zip(ids, suggested.iterrows(), part.influence):
        text = (relabel.in_words(s.effect_best, s.best_label, score)
                if s.best_label and np.isfinite(s.effect_best) else "")
        if s.check_label and s.check_label != s.label and not s.agree:
            text += ("; " if text else "") + f"the label check suggests {s.check_label}"
            if np.isfinite(s.suggested_effect):
                text += f" ({relabel.in_words(s.suggested_effect, s.check_label)})"
        elif s.check_label == s.label:
            text += ("; " if text else "") + "the label check keeps the given label"
        said.append(text)
    frame = pd.DataFrame({
        "action": action, "fix to": fix_to, "rank": part["rank"].to_numpy(),
        "image": [images.data_url(data.images[position[sid]], 96) for sid in ids],
        "given label": suggested.label.to_numpy(),
        "SGD-influence's label": suggested.best_label.to_numpy(),
        "label check's label": suggested.check_label.to_numpy(),
        "agree": np.where(suggested.agree, "✓ agree", "").astype(object),
        "what it does": said})
    if flipped:
        frame["demo: true label"] = [flipped.get(sid, "") for sid in ids]
    frame["sample id"] = ids
    return frame


# --- page 4 -----------------------------------------------------------------------------------
def button_words(k: int, f: int) -> str:
    if not f:
        return f"Retrain without the {k} ticked image{'s' * (k != 1)}"
    return (f"Retrain with the {f} fixed label{'s' * (f != 1)}"
            + (f" and without the {k} ticked image{'s' * (k != 1)}" if k else ""))


def controls_words(k: int, f: int) -> str:
    """The label of page 4's number of random controls."""
    if not f:
        return f"Random controls: retrain without {k} random images, this many times"
    return (f"Random controls: retrain with {f} random images given a random other label"
            + (f" and without {k} random images" if k else "") + ", this many times")


def controls_said(fixes: dict) -> str:
    """How the verdict names a round's random controls."""
    if not fixes:
        return "Removing as many **random** images instead"
    return "Doing the same to **random** images instead (random other labels, random removals)"


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


def show_fixed(data: ImageSet, position: dict[str, int], fixes: dict[str, str],
               flipped: dict[str, str]) -> None:
    """Page 4: the fixes about to be retrained with."""
    if not fixes:
        return
    demo = f" — {demo_words(flipped, (), fixes)}" if flipped else ""
    st.markdown(f"You fixed **{len(fixes)}** label{'s' * (len(fixes) != 1)}{demo}:")
    shown = list(fixes)[:32]
    images.image_grid(data, [position[i] for i in shown],
                      [f"{data.classes[data.labels[position[i]]]}→{fixes[i]}" for i in shown],
                      per_row=16, side=40)
    if len(fixes) > len(shown):
        st.caption(f"… and {len(fixes) - len(shown)} more.")


def show_per_class(data: ImageSet, position: dict[str, int], config: dict, removed: list[str],
                   fixes: dict[str, str]) -> None:
    """Page 4: per class, the training images a round removed, fixed away and fixed to it."""
    old = old_labels(data, position, config, [*removed, *fixes])
    table = per_class(data.classes, old, removed, fixes)
    if len(table):
        st.markdown("**What changed per class** (training images):")
        st.dataframe(table, hide_index=True)


def fixes_download(where, name: str, data: ImageSet, position: dict[str, int], base: dict,
                   chosen: dict) -> None:
    """Page 4: a CSV of the round's fixes (sample_id, old_label, new_label, estimated_effect)."""
    changed = chosen.get("fixes") or {}
    if not changed:
        return
    effects = session.store().relabel(base["id"], chosen["method"]) \
        if chosen.get("method") else None
    table = fixes_csv(changed, old_labels(data, position, base["config"], changed), effects)
    where.download_button("Fixed labels (CSV)", table.to_csv(index=False),
                          file_name=f"{name}-fixes.csv", mime="text/csv",
                          icon=":material/download:", width="stretch")
    where.caption(f"The {len(changed)} fixes: old and new label and SGD-influence's estimated "
                  "change of validation loss.")
