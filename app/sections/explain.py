"""Why this mistake? A gallery of the model's misclassified test images; opening one shows the
training images whose removal would most lower its loss (they pushed the model towards the
mistake) and those that helped it most, lets the user tick them for page 4's retraining, and,
after a retraining, the image's new prediction.

Not a page of its own: `show()` draws the section where a page calls it (page 4). The work runs
as a background job (app.services.explaining); the store keeps its results."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from influence import explain, methods
from influence.config import RunError

from .. import images, panels, session, words
from ..services import explaining, runner
from ..services.store import DONE

GALLERY = 24  # misclassified test images shown as thumbnails
SIDE_TITLES = {"harmful": "Pushed it towards this mistake: removing each is estimated to "
                          "lower this image's loss",
               "helpful": "Helped it most: removing each is estimated to raise this image's "
                          "loss"}


def mistakes(run_id: str) -> pd.DataFrame:
    """The run's misclassified test images (sample_id, label, predicted, confidence)."""
    preds = session.predictions(run_id)
    return preds[(preds.part == "test") & (preds.predicted != preds.label)].reset_index(
        drop=True)


def latest_round(run_id: str, dataset_id: str) -> dict | None:
    """The newest finished cleaning round of this model."""
    rounds = [r for r in session.store().rounds(dataset_id)
              if r["base"] == run_id and r["status"] == DONE]
    return rounds[-1] if rounds else None


def flagged_ids(run_id: str) -> set[str]:
    """The test images the label check flags by the model's own probabilities: their given
    label may be wrong (influence.labels.check_part, cached by the session)."""
    check = session.label_check(run_id, "test")
    return set(check.sample_id[check.flagged])


def gallery(data, position, shown: pd.DataFrame) -> None:
    images.image_grid(data, [position[i] for i in shown.sample_id],
                      [f"{data.classes[int(r.label)]} → {data.classes[int(r.predicted)]}"
                       for r in shown.itertuples()], per_row=12, side=48)


def picked_image(data, position, wrong: pd.DataFrame, suspect: set[str]) -> str:
    """The gallery, the flagged mistakes apart, and the choice of one image; returns its
    sample id."""
    flagged = wrong.sample_id.isin(suspect)
    plain, doubtful = wrong[~flagged], wrong[flagged]
    gallery(data, position, plain.head(GALLERY))
    st.caption("Captions: given label → the model's answer."
               + (f" The first {GALLERY} of {len(plain)} are shown; all can be opened below."
                  if len(plain) > GALLERY else ""))
    if len(doubtful):
        st.markdown(f"**The label may be wrong ({len(doubtful)}):** the "
                    f"{words.term('label-check', 'label check')} flags these test images, so "
                    "the model's answer may be the right one and the given label the mistake.")
        gallery(data, position, doubtful.head(GALLERY))
        st.caption("Captions: given label → the model's answer."
                   + (f" The first {GALLERY} of {len(doubtful)} are shown; all can be opened "
                      "below." if len(doubtful) > GALLERY else ""))
    names = {r.sample_id: f"{r.sample_id}: {data.classes[int(r.label)]} taken for "
                          f"{data.classes[int(r.predicted)]}"
                          + (" (flagged: the label may be wrong)" if r.sample_id in suspect
                             else "")
             for r in pd.concat([plain, doubtful]).itertuples()}
    return st.selectbox("Open a misclassified test image", list(names), format_func=names.get,
                        key="why_image")


def image_card(data, position, r, run_row: dict, dataset_id: str) -> None:
    """The image, its label, the prediction and, after a retraining, the new prediction."""
    left, right = st.columns([1, 3])
    left.image(images.enlarge(data.images[position[r.sample_id]], 160), width=160)
    right.markdown(f"**Given label:** {data.classes[int(r.label)]}  \n**The model said:** "
                   f"{data.classes[int(r.predicted)]} ({r.confidence:.0%} sure)")
    last = latest_round(run_row["id"], dataset_id)
    if last is not None and session.usable(session.store().run(last["cleaned"])):
        after = session.predictions(last["cleaned"]).set_index("sample_id").loc[r.sample_id]
        right_now = int(after.predicted) == int(r.label)
        right.markdown(f"**After the latest retraining** (without {len(last['removed'])} "
                       f"images): the model says **{data.classes[int(after.predicted)]}** — "
                       + ("now **right**." if right_now else "still wrong."))


def explain_controls(run_row: dict, test_id: str, guess: dict) -> str:
    """Exact or fast, with the time each takes, and the button that starts the job."""
    busy = runner.active(session.sid()) is not None
    timed = {"sgd": f"exact, all epochs ({words.seconds(guess['seconds_score'])})",
             "sgd-last": f"fast, last epoch only ({words.seconds(guess['seconds_score_last'])})"}
    method = st.radio("How", methods.keys(explains="batched"), horizontal=True, key="why_method",
                      format_func=lambda m: timed.get(m, methods.get(m).title))
    if session.store().explanation(run_row["id"], test_id, method) is None and st.button(
            "Explain this mistake", type="primary", disabled=busy, icon=":material/help:"):
        try:
            explaining.start_explain(session.store(), session.sid(), run_row["id"], test_id,
                                     method)
            st.rerun()
        except (runner.Busy, RunError) as e:
            panels.busy_error(e)
    return method


def side_table(data, position, part: pd.DataFrame, ticked: set[str]) -> None:
    st.dataframe(pd.DataFrame({
        "image": [images.data_url(data.images[position[i]]) for i in part.sample_id],
        "rank": part["rank"], "training image": part.sample_id, "label": part.label,
        "in words": [explain.in_words(s) for s in part.score],
        "ticked": [i in ticked for i in part.sample_id]}), hide_index=True,
        column_config={"image": st.column_config.ImageColumn(width="small")})


def explanation(data, position, frame: pd.DataFrame) -> None:
    """Both sides of a kept explanation, and ticking from it."""
    ticked = session.ticks()
    for side in explain.SIDES:
        part = frame[frame.side == side]
        st.markdown(f"**{SIDE_TITLES[side]}** ({len(part)})")
        if len(part):
            side_table(data, position, part, ticked)
    harmful = frame[frame.side == "harmful"].sample_id.tolist()
    if not harmful:
        return
    c1, c2 = st.columns([1, 3])
    k = c1.number_input("How many", 1, len(harmful), min(5, len(harmful)), key="why_k")
    if c2.button(f"Tick the {k} that pushed it most", icon=":material/check_box:"):
        session.set_ticks(ticked | set(harmful[:k]))
        st.rerun()
    c2.caption("They join the images ticked on page 3; retrain without them above, then this "
               "image's new prediction is shown here.")


def trust_check(run_row: dict, test_id: str, method: str) -> None:
    """The trust check for this image, in the same words as page 3's."""
    kept = session.store().explanation_trust(run_row["id"], test_id, method)
    if kept is not None:
        st.caption(words.trust(kept, of="this test image's loss"))
    elif st.button("Check this explanation against real retraining",
                   disabled=runner.active(session.sid()) is not None,
                   icon=":material/fact_check:"):
        try:
            explaining.start_explain_check(session.store(), session.sid(), run_row["id"],
                                           test_id, method)
            st.rerun()
        except (runner.Busy, RunError) as e:
            panels.busy_error(e)


def show(run_row: dict, dataset_row: dict) -> None:
    """The "why this mistake?" section for the current model."""
    st.subheader("Why this mistake?")
    data, position = session.data_of(dataset_row["id"])
    wrong = mistakes(run_row["id"])
    if wrong.empty:
        st.success("The model gets every test image right: there is no mistake to explain.")
        return
    suspect = flagged_ids(run_row["id"]) & set(wrong.sample_id)
    apart = (f" — {len(wrong) - len(suspect)} mistakes, and {len(suspect)} whose given label "
             "may be wrong (below, apart)") if suspect else ""
    st.caption(f"The model gets {len(wrong)} test images wrong by their given labels{apart}. "
               "Open one to see which training images SGD-influence holds responsible, "
               "estimated for that image alone.")
    test_id = picked_image(data, position, wrong, suspect)
    image_card(data, position, next(wrong[wrong.sample_id == test_id].itertuples()), run_row,
               dataset_row["id"])
    if test_id in suspect:
        check = session.label_check(run_row["id"], "test").set_index("sample_id").loc[test_id]
        st.warning(f"The {words.term('label-check', 'label check')} flags this test image: its "
                   f"given label {check.label} may be wrong; it suggests "
                   f"**{check.suggested_label}** ({check.suggested_p:.0%}). A training image that "
                   "\"pushed it towards this mistake\" may have pushed it towards the right "
                   "answer.", icon=":material/flag:")
    method = explain_controls(run_row, test_id,
                              session.estimate(dataset_row["id"], run_row["config"]))
    for kind in ("explain", "explain-check"):
        job = runner.latest(session.sid(), kind)
        if job is not None and job.result.get("test_id") == test_id and (
                job.running or job.status != DONE):
            panels.job_panel(kind, curves=False, log_after=False)
            panels.job_outcome(job)
    frame = session.store().explanation(run_row["id"], test_id, method)
    if frame is not None:
        explanation(data, position, frame)
        trust_check(run_row, test_id, method)
