"""Fixing labels instead of removing images, on screen: page 3's "fix labels" view (per image the
suggested label, keep / remove / fix → label, "Fix top K to their suggested labels") and page 4's
fixes about to be retrained with, what a round changed per class, and the fixes as a CSV. What
is suggested, and the bookkeeping of fixes, is influence.advice; the session keeps its fixes
next to its ticks (session.fixes). Page 4 retrains with both (influence.cleaning.clean with
fixes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from datasets import ImageSet
from influence import advice, methods, relabel

from .. import images, session, words


# --- suggested labels, as stored ---------------------------------------------------------------
def relabel_table(run_id: str, method: str | None) -> tuple[str | None, pd.DataFrame | None]:
    """The relabel effects kept with a run's SGD-influence ranking: of `method` when it has
    them, else of any SGD-influence ranking of the run. (method, table) or (None, None)."""
    info = session.store().score_info(run_id)
    relabelling = methods.keys(relabels=True)
    for key in ([method] if method in relabelling else []) + list(relabelling):
        if (info.get(key) or {}).get("relabel"):
            return key, session.relabel(run_id, key)
    return None, None


def label_check(run_id: str) -> pd.DataFrame | None:
    """The label check of the training images, when it has been computed for this run."""
    if advice.CHECK not in session.store().score_info(run_id):
        return None
    return session.scores(run_id, advice.CHECK)


# --- page 3's view ----------------------------------------------------------------------------
def view(run_row: dict, method: str, ranked: pd.DataFrame, data: ImageSet,
         position: dict[str, int], flipped: dict[str, str], top_k: int, per_page: int,
         filters: str = "") -> None:
    """The "fix labels" view of page 3 over `ranked` (the ranking as filtered there, with its
    rank and label columns): per image SGD-influence's best other label and its effect next to
    removal's, the label check's label and whether the two agree, and per row keep / remove /
    fix → label; "Fix top K to their suggested labels"."""
    ticks = session.ticks()
    fixes = session.fixes(run_row["id"], ticks)
    source, effects = relabel_table(run_row["id"], method)
    check = label_check(run_row["id"])
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
        suggested = advice.suggestions(ranked.sample_id, ranked.label, effects, check)
        c1, c2 = st.columns(2, vertical_alignment="bottom")
        version = st.session_state.setdefault("fix_version", 0)
        if c1.button(f"Fix top {top_k} to their suggested labels",
                     icon=":material/edit_note:"):
            ticks, fixes = advice.fix_top(list(ranked.sample_id.head(int(top_k))), suggested, ticks,
                                   fixes)
            session.set_fixes(run_row["id"], fixes, ticks)
            st.session_state.fix_version += 1
            st.session_state.tick_version = st.session_state.get("tick_version", 0) + 1
            st.rerun()
        if c2.button("Clear all fixes", icon=":material/undo:", disabled=not fixes):
            session.set_fixes(run_row["id"], {})
            st.session_state.fix_version += 1
            st.rerun()
        pages = max(1, -(-len(ranked) // per_page))
        page = st.pagination(pages, key=f"fix-page-{run_row['id']}-{filters}")
        part = ranked.iloc[(page - 1) * per_page: page * per_page]
        shown = rows(part, suggested.loc[part.sample_id], ticks, fixes, data, position, flipped)
        columns = {
            "action": st.column_config.SelectboxColumn("Action", options=advice.ACTIONS,
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
            key=f"fix-editor-{run_row['id']}-{filters}-{page}-{version}")
        new_ticks, new_fixes = advice.apply_edits(edited, shown, ticks, fixes)
        if (new_ticks, new_fixes) != (ticks, fixes):
            session.set_fixes(run_row["id"], new_fixes, new_ticks)
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


def show_fixed(data: ImageSet, position: dict[str, int], fixes: dict[str, str],
               flipped: dict[str, str]) -> None:
    """Page 4: the fixes about to be retrained with."""
    if not fixes:
        return
    demo = f" — {words.demo_fixes(flipped, (), fixes)}" if flipped else ""
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
    old = advice.old_labels(data, position, config, [*removed, *fixes])
    table = advice.per_class(data.classes, old, removed, fixes)
    if len(table):
        st.markdown("**What changed per class** (training images):")
        st.dataframe(table, hide_index=True)


def fixes_download(where, name: str, data: ImageSet, position: dict[str, int], base_row: dict,
                   round_row: dict) -> None:
    """Page 4: a CSV of the round's fixes (sample_id, old_label, new_label, estimated_effect)."""
    changed = round_row.get("fixes") or {}
    if not changed:
        return
    effects = session.relabel(base_row["id"], round_row["method"]) \
        if round_row.get("method") else None
    old = advice.old_labels(data, position, base_row["config"], changed)
    table = advice.fixes_csv(changed, old, effects)
    where.download_button("Fixed labels (CSV)", table.to_csv(index=False),
                          file_name=f"{name}-fixes.csv", mime="text/csv",
                          icon=":material/download:", width="stretch")
    where.caption(f"The {len(changed)} fixes: old and new label and SGD-influence's estimated "
                  "change of validation loss.")
