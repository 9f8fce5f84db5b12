"""The review grid of page 3: the images the label check flags, big, one row each, with the label
they look like, for the training, validation (the yardstick) and test images. Per image: accept
the suggested label, choose another one, or reject (the given label is right). A summary of the
confused class pairs; filters "flagged only" and by class pair; a search by sample id; pages.

What a decision does depends on the part:

* training images: an accepted label is a fix, retrained with on page 4 (session.fixes);
* validation images: each can also be left out of the query (session.query_exclude), and the
  count left out is always stated; an accepted label is a correction;
* test images: flagged ones are marked "the label may be wrong"; an accepted label is a
  correction.

Corrections of validation and test labels change the data set itself: they are saved as a new
copy of it (same split), on which a model is trained again (save_corrections).

The table is a st.data_editor (arrow keys move, Enter or typing edits, a pasted column fills
many rows); decisions live in the session (session.reviewed), keyed by sample id, so they
survive paging, filtering and page switches."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from datasets import ImageSet
from influence import advice

from .. import images, session, words

DECISIONS = ("undecided", "accept", "reject")
SIDE = 84  # thumbnail side and row height, in pixels
HEADER = 36  # the grid's header row, in pixels
ALL_PAIRS = "All class pairs"
PARTS = {
    "train": {"name": "training images",
              "accept": "accepted labels are fixes: page 4 retrains with them"},
    "val": {"name": "validation images",
            "accept": "accepted labels are corrections of the data set (saved as a new copy "
                      "below); until then, leave wrong ones out of the query"},
    "test": {"name": "test images",
             "accept": "accepted labels are corrections of the data set (saved as a new copy "
                       "below); page 4 counts the test images with their given labels"},
}


# --- the logic under the grid (no streamlit) ---------------------------------------------------
def pairs(check: pd.DataFrame) -> pd.DataFrame:
    """The confused class pairs among the flagged images (advice.confused_pairs), with the
    option text of the class-pair filter."""
    found = advice.confused_pairs(check).reset_index(drop=True)
    found["option"] = [f"labelled {g}, looks like {s} ({n})"
                       for g, s, n in zip(found.given, found.looks_like, found["count"])]
    return found


def select(check: pd.DataFrame, flagged_only: bool, pair: tuple[str, str] | None,
           search: str) -> pd.DataFrame:
    """The images the grid shows, in the check's order (likeliest label errors first). A search
    (part of a sample id) looks through every image of the part, whatever the other filters."""
    if search.strip():
        return check[check.sample_id.astype(str).str.contains(search.strip(), case=False,
                                                              regex=False)]
    view = check[check.flagged.astype(bool)] if flagged_only else check
    if pair is not None:
        view = view[(view.label.astype(str) == pair[0])
                    & (view.suggested_label.astype(str) == pair[1])]
    return view


def percent(p: float) -> str:
    """A probability as a whole percentage rounded down, so that one just under the label
    check's threshold for a sure fix (94.96 %) never reads as the threshold itself (95 %)."""
    return f"{math.floor(100 * p + 1e-9)}%"


def rows(part: pd.DataFrame, decided: dict[str, str], exclude: set[str] | None = None,
         test: bool = False, rec: advice.Recommendation | None = None) -> pd.DataFrame:
    """The grid's rows for `part` (rows of a label check) without their thumbnails: the
    decision (undecided / accept / reject) and the label an acceptance gives (the accepted one,
    else the suggested one), for validation images whether they are left out of the query, and
    with the recommendation `rec` (training images) what it proposes per image: accept (its
    fixes, the check is sure) or remove or look (flagged, the check unsure of the label)."""
    ids = part.sample_id.astype(str).tolist()
    given = part.label.astype(str).to_numpy()
    suggested = part.suggested_label.astype(str).to_numpy()
    decision = ["undecided" if sid not in decided else "accept" if decided[sid] else "reject"
                for sid in ids]
    label = [decided.get(sid) or s for sid, s in zip(ids, suggested)]
    frame = pd.DataFrame({
        "decision": decision, "label": label, "sample id": ids, "given label": given,
        "looks like": [f"{s} ({percent(p)})" if s != g else f"{g} (its given label, "
                       f"{percent(p)})" for s, g, p in zip(suggested, given, part.suggested_p)],
        "flagged": part.flagged.astype(bool).to_numpy()})
    if test:
        frame["note"] = np.where(frame.flagged, "the label may be wrong", "")
    if rec is not None:
        frame.insert(1, "recommended", ["accept" if sid in rec.fixes else "remove or look"
                                        if sid in rec.remove_flagged else "" for sid in ids])
    if exclude is not None:
        frame.insert(0, "left out of the query", [sid in exclude for sid in ids])
    return frame


def decisions(edited: pd.DataFrame, shown: pd.DataFrame, decided: dict[str, str]
              ) -> dict[str, str]:
    """The decisions after the grid's edits (`edited` over the rows as `shown`): accept gives
    the row's label, reject keeps the given one, undecided forgets the image. Choosing another
    label on a row accepts it; accepting the given label is a rejection of the suggestion."""
    decided = dict(decided)
    before = shown.set_index("sample id")
    for _, row in edited.iterrows():
        sid, choice, label = row["sample id"], row["decision"], str(row["label"])
        if choice == before.loc[sid, "decision"] and label != str(before.loc[sid, "label"]):
            choice = "accept"
        if choice == "accept" and label == str(row["given label"]):
            choice = "reject"
        if choice == "undecided":
            decided.pop(sid, None)
        else:
            decided[sid] = label if choice == "accept" else ""
    return decided


def left_out(edited: pd.DataFrame, shown: pd.DataFrame, exclude: set[str]) -> set[str]:
    """The validation images left out of the query after the grid's edits."""
    ids = set(shown["sample id"])
    return (set(exclude) - ids) | set(edited["sample id"][edited["left out of the query"]])


def corrected_labels(data: ImageSet, position: dict[str, int], corrections: dict[str, str]
                     ) -> np.ndarray:
    """Every image's label (class index) with the accepted corrections applied."""
    labels = data.labels.copy()
    for sid, label in corrections.items():
        labels[position[sid]] = list(map(str, data.classes)).index(str(label))
    return labels


# --- on screen ---------------------------------------------------------------------------------
def summary(found: pd.DataFrame, flagged: int, total: int, what: str) -> None:
    """How many the check flags, and which class pairs it finds confused."""
    if not flagged:
        st.success(f"The label check flags none of the {total:,} {what}.")
        return
    st.markdown(f"The label check flags **{flagged:,}** of the {total:,} {what}"
                + (":" if len(found) else "."))
    if len(found):
        top = found.head(6)
        st.markdown("\n".join(f"- {s}" for s in top.sentence)
                    + (f"\n- … and {len(found) - len(top)} more pair"
                       f"{'s' * (len(found) - len(top) != 1)}" if len(found) > len(top) else ""))


def grid(where: str, run_row: dict, check: pd.DataFrame, data: ImageSet,
         position: dict[str, int], exclude: list[str] | None = None,
         truth: dict[str, str] | None = None, rec: advice.Recommendation | None = None) -> None:
    """The review grid of one part (`where`: "train", "val" or "test") of a run, from its label
    check `check` (sample_id, label, flagged, suggested_label, suggested_p; likeliest errors
    first). For the validation images, `exclude` (the ids left out of the query) makes the
    "left out of the query" column; `truth` (the demo's flipped images → their true label)
    a "demo: true label" column; `rec` (training images: advice.recommend) a "recommended"
    column and a button accepting its fixes only."""
    run_id, about = run_row["id"], PARTS[where]
    found = pairs(check)
    summary(found, int(check.flagged.sum()), len(check), about["name"])
    decided = session.reviewed(run_id, where)
    c1, c2, c3, c4 = st.columns([1, 2, 2, 1], vertical_alignment="bottom")
    flagged_only = c1.toggle("Flagged only", key=session.remember(f"flagged-{where}", True),
                             disabled=not check.flagged.any())
    options = [ALL_PAIRS, *found.option]
    if st.session_state.get(f"pair-{where}") not in options:  # another run's pair
        st.session_state.pop(f"pair-{where}", None)
    chosen = c2.selectbox("Class pair", options, key=session.remember(f"pair-{where}", ALL_PAIRS))
    search = c3.text_input("Search by sample id", key=f"search-{where}-{run_id}",
                           placeholder="e.g. 0042", help="Looks through every one of the "
                           f"{len(check):,} {about['name']}, flagged or not.")
    per_page = c4.selectbox("Rows per page", [10, 25, 50],
                            key=session.remember(f"per-page-{where}", 10))
    pair = None
    if chosen != ALL_PAIRS:
        at = found[found.option == chosen].iloc[0]
        pair = (str(at.given), str(at.looks_like))
    view = select(check, flagged_only and check.flagged.any(), pair, search)
    if not len(view):
        st.caption("No image matches these filters.")
        return
    pages = max(1, math.ceil(len(view) / per_page))
    filters = f"{where}-{run_id}-{flagged_only}-{chosen}-{search}-{per_page}"
    page = st.pagination(pages, key=f"review-page-{filters}")
    part = view.iloc[(page - 1) * per_page: page * per_page]
    left = set(exclude) if exclude is not None else None
    shown = rows(part, decided, left, test=where == "test", rec=rec)
    st.caption(f"{len(view):,} image{'s' * (len(view) != 1)} match; showing "
               f"{len(part)} (page {page} of {pages}). Per row choose **accept** (the label in "
               f"the *label* column), **reject** (the given label is right) or another label; "
               f"{about['accept']}. Arrow keys move, Enter edits.")
    table = shown.copy()
    if truth:
        table["demo: true label"] = [truth.get(sid, "") for sid in part.sample_id]
    table.insert(table.columns.get_loc("sample id"), "image",
                 [images.data_url(data.images[position[sid]], SIDE) for sid in part.sample_id])
    columns = {
        "decision": st.column_config.SelectboxColumn("Decision", options=DECISIONS,
                                                     required=True, width=100),
        "label": st.column_config.SelectboxColumn(
            "Label", options=[str(c) for c in data.classes], required=True, width=70,
            help="The label accepting gives: the one the image looks like, or another."),
        "image": st.column_config.ImageColumn("Image", width=SIDE + 8),
        "flagged": st.column_config.CheckboxColumn("Flagged", width=70, help=(
            "The label check (confident learning on this model) finds the given label likely "
            "wrong.")),
        "looks like": st.column_config.TextColumn("Looks like (model's probability)"),
    }
    if left is not None:
        columns["left out of the query"] = st.column_config.CheckboxColumn(
            "Left out of the query", width=110, help="Left out of the validation loss that "
            "SGD-influence, the trust check and page 4 measure with.")
    editable = ("decision", "label", "left out of the query")
    version = st.session_state.setdefault(f"review-version-{where}", 0)
    edited = st.data_editor(table, hide_index=True, column_config=columns, row_height=SIDE,
                            height=HEADER + len(table) * SIDE + 3,
                            disabled=[c for c in table.columns if c not in editable],
                            key=f"review-editor-{filters}-{page}-{version}")
    changed = decisions(edited, shown, decided)
    if changed != decided:
        session.set_reviewed(run_id, where, changed)
        st.rerun()
    if left is not None:
        now = left_out(edited, shown, left)
        if len(now) >= len(check):
            st.error("At least one validation image must stay in the query: it is what every "
                     "influence score measures with.")
        elif now != left:
            session.set_query_exclude(run_id, now)
            st.rerun()
    accepted = sum(bool(v) for v in decided.values())
    open_ = len(set(check.sample_id[check.flagged.astype(bool)]) - decided.keys())
    st.markdown(f"**{accepted}** accepted, **{len(decided) - accepted}** rejected, **{open_}** "
                "flagged images not decided yet.")
    if rec is not None and rec.fixes and not rec.fixes.keys() <= decided.keys():
        if st.button(f"Accept the {len(rec.fixes)} recommended fixes (the check is sure)",
                     key=f"accept-sure-{where}", icon=":material/done_all:"):
            session.set_reviewed(run_id, where, {**rec.fixes, **decided})
            st.session_state[f"review-version-{where}"] = \
                st.session_state.get(f"review-version-{where}", 0) + 1
            st.rerun()
    if decided and st.button("Forget these decisions", key=f"forget-{where}",
                             icon=":material/undo:"):
        session.set_reviewed(run_id, where, {})
        st.session_state[f"review-version-{where}"] = version + 1
        st.rerun()


def save_corrections(dataset_row: dict, run_row: dict, data: ImageSet,
                     position: dict[str, int]) -> None:
    """The accepted corrections of validation and test labels, saved as a new copy of the data
    set (same split, same demo) to train on again."""
    corrections = {**session.reviewed(run_row["id"], "val"),
                   **session.reviewed(run_row["id"], "test")}
    corrections = {sid: label for sid, label in corrections.items() if label}
    if not corrections:
        return
    n = len(corrections)
    st.markdown(f"**{n}** validation or test label{'s' * (n != 1)} corrected. They change the "
                "data set itself: save it as a new copy (same split) and train a model on it "
                "on page 2, so that the " + words.term("yardstick", "yardstick")
                + " and the test error use the corrected labels.")
    if st.button(f"Save a copy of the data set with the {n} corrected label{'s' * (n != 1)}",
                 icon=":material/save:", key="save-corrections"):
        fixed = data.relabelled(corrected_labels(data, position, corrections),
                                f"{n} validation/test labels corrected")
        row = session.store().add_dataset(
            fixed, f"{dataset_row['name']} ({n} labels corrected)", session.sid(),
            parent=dataset_row.get("parent") or dataset_row["id"],
            flipped=dataset_row.get("flipped"), split=dataset_row.get("split"))
        session.set_dataset(row)
        st.switch_page("views/train.py")
