"""Fixing labels instead of removing images, on screen: the label check of the training images
(whose flagged images page 3's review grid offers to fix, app.sections.review) and page 4's
fixes about to be retrained with, what a round changed per class, and the fixes as a CSV. The
bookkeeping of fixes is influence.advice; the session keeps its fixes next to its ticks
(session.fixes). Page 4 retrains with both (influence.cleaning.clean with fixes)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from datasets import ImageSet
from influence import advice

from .. import images, session, words


def label_check(run_id: str) -> pd.DataFrame | None:
    """The label check of the training images, when it has been computed for this run."""
    if advice.CHECK not in session.store().score_info(run_id):
        return None
    return session.scores(run_id, advice.CHECK)


# --- page 4 -----------------------------------------------------------------------------------
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
