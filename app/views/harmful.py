"""Page 3: compute SGD-influence, look at the training images ranked most harmful first, tick the
ones to remove."""
import math

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, images, panels, session, words
from app.sections import fixes, how_many, recommend, review
from app.services import jobs, runner, timing
from app.services.store import DONE
from influence import advice, methods
from influence import trust as trust_check
from influence.config import RunError

ROW_HEIGHT = 44
LARGE = 192  # thumbnails are drawn this big when double-clicked (still a small PNG)

st.title("3 · Find the harmful training images")
st.caption("For every training image, SGD-influence estimates how the loss on the validation "
           "images would change if that image had been left out of training — the same SGD run, "
           "replayed without it. A **negative** score means removing it would **lower** the loss: "
           "the image hurts the model (often a wrong label or an odd image). Other well-known "
           "rankings can be computed next to it, for comparison.")

dataset_row = session.current_dataset_row()
run_row = session.current_run_row()
if dataset_row is None or run_row is None or run_row["dataset"] != dataset_row["id"]:
    panels.need("Train a model on the current data set first.", "views/train.py",
                "Go to 2 · Train")
if not session.usable(run_row):
    panels.run_status_note(run_row)
    panels.need("Train a model first (or open a finished one).", "views/train.py",
                "Go to 2 · Train")
if not (run_row["metrics"] or {}).get("learned", True):
    st.warning("**This model did not learn**: its validation loss is not clearly below what "
               "guessing from the class frequencies gives. Which training images it was "
               "influenced by means nothing yet, so nothing is ranked. Page 2 offers to train "
               "it longer.", icon=":material/warning:")
    panels.need("Train a model that learned first.", "views/train.py", "Go to 2 · Train")
data, position = session.data_of(dataset_row["id"])
store = session.store()
scored = store.score_info(run_row["id"])
job = runner.latest(session.sid(), "score")
busy = runner.active(session.sid()) is not None

st.markdown("**Fix first; remove only what is checked.** To find **wrong labels**, the "
            f"{words.term('label-check', 'label check')} (confident learning on your own model) "
            "flags images whose given label a model that never saw them finds unlikely, and "
            "the label they look like: review them below and accept or reject each fix. To "
            "**remove** images, SGD-influence estimates what leaving each one out does to the "
            "validation loss; removing by it is recommended only when its "
            f"{words.term('trust-check', 'trust check')} passes on your data.")

# --- the yardstick: are the validation labels right? ----------------------------------------------
val_check = session.label_check(run_row["id"], "val")
test_check = session.label_check(run_row["id"], "test")
suspicious = val_check[val_check.flagged]
exclude = session.query_exclude(run_row["id"], suspicious.sample_id, val_check.sample_id) \
    if len(suspicious) < len(val_check) else []
with st.expander("Check the yardstick: the validation labels"
                 + (f" — {len(suspicious)} look wrong" if len(suspicious) else " — all look right"),
                 expanded=bool(len(suspicious)) and not scored):
    st.caption(f"Every influence score measures harm on the validation images (the "
               f"{words.term('yardstick', 'yardstick')}; the ones used make the "
               f"{words.term('query', 'query')}). If some of their labels are wrong, good "
               "training images that contradict them look harmful. The trained model never "
               "saw these images, so its own probabilities check them (cleanlab's "
               "find_label_issues).")
    st.markdown(words.left_out(len(exclude), len(val_check), len(suspicious)))
    if len(suspicious) and len(suspicious) == len(val_check):
        st.error("The check flags every validation image, so none would be left to "
                 "measure with: look at the labels of your data before going on.")
        review.grid("val", run_row, val_check, data, position)
    else:
        review.grid("val", run_row, val_check, data, position, exclude)

with st.expander("Check the test labels" + (
        f" — {int(test_check.flagged.sum())} may be wrong" if test_check.flagged.any() else
        " — all look right")):
    st.caption("The test images judge every model on page 4; the model never trained on them, "
               "so its own probabilities check their labels too. A flagged test image's label "
               "may be wrong: page 4 lists such mistakes apart.")
    review.grid("test", run_row, test_check, data, position)
review.save_corrections(dataset_row, run_row, data, position)

# --- scoring -----------------------------------------------------------------------------------
guess = session.estimate(dataset_row["id"], run_row["config"])
epochs = run_row["config"]["epochs"]
ours = methods.keys(in_app=True, phase="score")  # SGD-influence, the others are to compare with
timed = {"sgd": f"Exact: retrace all {epochs} epochs ({words.seconds(guess['seconds_score'])})",
         "sgd-refined": f"Exact, with the {methods.REFINE} most harmful and most helpful "
                        f"refined ({words.seconds(guess['seconds_score_refined'])})",
         "sgd-last": f"Fast: last epoch only ({words.seconds(guess['seconds_score_last'])})"}
labels = {m: timed.get(m, methods.get(m).title) for m in ours} | {
    m: f"Compare: {methods.get(m).title}" for m in methods.keys(in_app=True) if m not in ours}
for m, key in (("kl", "seconds_kl"), ("tracin", "seconds_tracin"),
               ("confident-learning", "seconds_label_check")):
    if m in labels:
        labels[m] += f" ({words.seconds(guess[key])})"
with st.expander("Compute influence" + (" again, or another ranking to compare" if scored
                                         else ""), expanded=not scored):
    chosen = st.radio("Method", list(labels), format_func=labels.get,
                      captions=[methods.get(m).help for m in labels],
                      key=session.remember("score_method", "sgd"),
                      help="SGD-influence (the first three) is what this tool is built on. The "
                      "others are well-known ways of ranking training images, for comparison: "
                      "the demo's flipped-label count and page 4's retraining work for all.")
    seconds = {"sgd": "seconds_score", "sgd-refined": "seconds_score_refined",
               "sgd-last": "seconds_score_last", "kl": "seconds_kl", "tracin": "seconds_tracin",
               "confident-learning": "seconds_label_check"}
    if warn := timing.long_warning(guess.get(seconds.get(chosen), 0),
                                   "Fast: last epoch only"):
        st.warning(warn, icon=":material/timer:")
    if st.button("Compute influence" if chosen in ours else "Compute this ranking",
                 type="primary", disabled=busy, icon=":material/calculate:"):
        try:
            jobs.start_scoring(store, session.sid(), run_row["id"], chosen, exclude)
            session.state()["method"][run_row["id"]] = chosen
            session.save()
            st.rerun()
        except (runner.Busy, RunError) as e:
            panels.busy_error(e)
if job is not None and job.result.get("run") == run_row["id"]:
    panels.job_panel("score", curves=False, log_after=False)
    panels.job_outcome(job, f"Every training image scored in {job.elapsed:.1f} s "
                            f"({methods.get(job.result['method']).title}).")

method = session.method()
if method is None:
    st.stop()
if len(scored) > 1:
    method = st.segmented_control("Ranking", list(scored), default=method, required=True,
                                  format_func=lambda m: methods.get(m).title,
                                  key=f"view-{run_row['id']}")
    if method != session.state()["method"].get(run_row["id"]):
        session.state()["method"][run_row["id"]] = method
        session.save()
frame = session.scores(run_row["id"], method)
used = scored[method].get("query") or []
if methods.get(method).estimates_removal and (used or exclude) and set(used) != set(exclude):
    st.warning(f"This ranking was computed with {len(used)} validation images left out of the "
               f"query; now {len(exclude)} are. Compute it again to use the current query.",
               icon=":material/sync_problem:")
elif used:
    st.caption(f"Computed with {len(used)} validation images left out of the query.")
ranking = methods.get(method)
removal = ranking.estimates_removal  # a score in units of validation loss

# --- trust check ------------------------------------------------------------------------------
trust = scored[method].get("trust")
verdict = advice.trust_verdict(trust) if removal else None  # against the check's query loss
check_job = runner.latest(session.sid(), "check")
if not removal:
    st.caption(f"This ranking ({ranking.title}) does not estimate what removing an "
               "image does to the model, so real retraining cannot check it image by image. "
               "Page 4 shows what removing its top images does.")
elif trust:
    recommend.trust_box(verdict, trust)
else:
    tops = trust_check.top_sizes(len(frame))
    c1, c2 = st.columns([1, 3])
    n_check = c1.number_input("Single images too (0: none)", 0, 50,
                              key=session.remember("n_check", jobs.CHECK_SINGLES))
    took = timing.check_seconds(guess, int(n_check), jobs.CHECK_GROUPS, ranking.retrain_mode)
    c2.markdown(f"How far can you trust this ranking on your data? The "
                f"{words.term('trust-check', 'trust check')} retrains the model for real "
                f"without each of {jobs.CHECK_GROUPS} random groups of 5 % of the training "
                f"images and without the ranking's top {' and top '.join(map(str, tops))}"
                + (f", and without each of {n_check} single images" if n_check else "")
                + f", all at once{words.on_cores(guess['workers'])}, and compares with the "
                f"estimates ({words.seconds(took)}). "
                "Removing images by the ranking is recommended only when it passes. Single "
                "images cost one retraining each and are mostly noise on deep models, so they "
                "are off unless you ask.")
    if warn := timing.long_warning(took, "the fast ranking's check, which retrains the last "
                                         "epoch only"):
        c2.warning(warn, icon=":material/timer:")
    if c2.button("Check against real retraining", disabled=busy):
        try:
            jobs.start_check(store, session.sid(), run_row["id"], method, int(n_check))
            st.rerun()
        except (runner.Busy, RunError) as e:
            panels.busy_error(e)
if check_job is not None and check_job.result.get("run") == run_row["id"] and (
        check_job.running or check_job.status != DONE):
    panels.job_panel("check", curves=False, log_after=False)
    panels.job_outcome(check_job)

# --- what to do: recommended only where this run's own checks support it -----------------------
check = fixes.label_check(run_row["id"])  # of the training images, once computed
curve = how_many.latest(run_row, method)
rec = advice.recommend(check, frame if removal else None, trust if removal else None,
                       curve["suggestion"] if curve else None)
recommend.section(rec, verdict, ranking.title, check is not None)
for ids, what in ((rec.remove, "recommended for removal"),
                  (rec.remove_flagged, "flagged images the check is unsure of for removal")):
    ticked = session.ticks()
    if ids and not set(ids) <= ticked and st.button(f"Tick the {len(ids)} {what}",
                                                    icon=":material/check_box:"):
        session.set_ticks(ticked | set(ids))
        st.session_state.tick_version = st.session_state.get("tick_version", 0) + 1
        st.rerun()

how_many.section(run_row, method, busy, rec.how_many if rec.remove else None)  # gated by trust

st.subheader("Review the flagged training labels")
if check is None:
    st.caption("The label check trains the model's own SGD on 5 folds of the training images "
               "and flags the images whose given label their held-out fold model finds "
               "unlikely (confident learning), with the label each looks like.")
    recommend.label_check_button(run_row, guess["seconds_label_check"], busy)
else:
    review.grid("train", run_row, check, data, position,
                truth=dataset_row.get("flipped") or None, rec=rec)

# --- the ranking -------------------------------------------------------------------------------
preds = session.predictions(run_row["id"]).set_index("sample_id")
table = frame.assign(rank=np.arange(1, len(frame) + 1))
found = preds.reindex(table.sample_id)
table["predicted_label"] = [data.classes[int(p)] for p in found.predicted]
table["confidence"] = found.confidence.to_numpy()
table["predicted"] = [f"{data.classes[int(p)]} ({c:.0%})" for p, c in
                      zip(found.predicted, found.confidence)]
flipped = dataset_row.get("flipped") or {}
ticked = session.ticks()

left, right = st.columns([3, 2])
with left:
    st.plotly_chart(charts.scores_histogram(frame, method), key="histogram")
with right:
    if ranking.flag:
        st.metric(ranking.flag[0], f"{ranking.count_flagged(frame):,} of {len(frame):,}")
    if flipped:
        k_demo = st.session_state.get("top_k", 10)
        top = set(frame.sample_id.head(int(k_demo)))
        in_top = len(top & flipped.keys())
        in_ticked = len(ticked & flipped.keys())
        chance = k_demo * len(flipped) / len(frame)
        st.info(f"**Demo:** {len(flipped)} labels were flipped. **{in_top}** of them are in "
                f"the top {k_demo} (picking at random would find about {chance:.1f}), and "
                f"**{in_ticked}** of your {len(ticked)} ticked images are flipped ones"
                + (f"; {words.demo_fixes(flipped, ticked, fixed)}." if (
                    fixed := session.fixes(run_row["id"], ticked)) else "."),
                icon=":material/science:")

st.subheader("Ranked training images")
if removal and not rec.remove:
    st.caption("Removing by this ranking is not recommended on this data (see *What to do*): "
               "what you tick here is your own choice, and page 4 checks it against random "
               "removal.")
c1, c2, c3 = st.columns([2, 2, 1])
helpful = c1.toggle("Show the most helpful instead", key=session.remember("helpful", False))
disagree = c1.toggle("Only where the given label ≠ the predicted one",
                     key=session.remember("disagree", False),
                     help="Images the model itself labels differently: where a wrong label is "
                     "likeliest. Where the two agree, the given label is usually right.")
class_names = ["All classes"] + list(data.classes)
if st.session_state.get("class_filter") not in class_names:  # another data set's class
    st.session_state.pop("class_filter", None)
chosen_class = c2.selectbox("Given label", class_names,
                            key=session.remember("class_filter", "All classes"))
per_page = c3.selectbox("Rows per page", [10, 20, 50], key=session.remember("per_page", 20))

view = table.iloc[::-1] if helpful else table
if chosen_class != "All classes":
    view = view[view.label.astype(str) == chosen_class]
if disagree:
    view = view[view.label.astype(str) != view.predicted_label]

c1, c2, c3, _ = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
most = max(1, len(view))
st.session_state["top_k"] = min(st.session_state.get("top_k", 10), most)
top_k = c1.number_input("How many to tick (K)", 1, most, key=session.remember("top_k", 10))
# Ticks live in the session state (session.ticks), keyed by sample id; the table below only
# shows them. st.data_editor keeps its own record of the edits made in it under its widget key
# and replays them on every rerun. So its key names everything that decides which rows are on
# screen (run, ranking, helpful or harmful end, the filters, page size, page): another set of
# rows gets a fresh editor rather than the edits made on another page. `tick_version` counts the
# changes made outside the editor ("Tick top K", "Untick all"); it is part of the key too, so
# after one the editor is rebuilt from the stored ticks instead of replaying stale edits.
version = st.session_state.setdefault("tick_version", 0)
if c2.button(f"Tick top {top_k}", icon=":material/check_box:"):
    session.set_ticks(ticked | set(view.sample_id.head(int(top_k))))
    st.session_state.tick_version += 1
    st.rerun()
if c3.button("Untick all", icon=":material/check_box_outline_blank:", disabled=not ticked):
    session.set_ticks(set())
    st.session_state.tick_version += 1
    st.rerun()

pages = max(1, math.ceil(len(view) / per_page))
filters = f"{method}-{helpful}-{disagree}-{chosen_class}-{per_page}"
page = st.pagination(pages, key=f"page-{run_row['id']}-{filters}")
shown = view.iloc[(page - 1) * per_page: page * per_page]
rows = pd.DataFrame({
    "remove": [sid in ticked for sid in shown.sample_id],
    "rank": shown["rank"].to_numpy(),
    "image": [images.data_url(data.images[position[sid]], LARGE) for sid in shown.sample_id],
    "given label": shown.label.astype(str).to_numpy(),
    "predicted": shown.predicted.to_numpy(),
    "what removing it does": [ranking.row_in_words(r) for _, r in shown.iterrows()],
})
if flipped:
    rows["demo: true label"] = [flipped.get(sid, "") for sid in shown.sample_id]
rows["score"] = shown.influence.to_numpy()
rows["sample id"] = shown.sample_id.to_numpy()

st.caption("Tick a box to leave that image out when retraining. Double-click a thumbnail to "
           "see it large.")
columns = {
    "remove": st.column_config.CheckboxColumn("Remove?", help="Tick to leave this image out "
                                              "when retraining (page 4)."),
    "rank": st.column_config.NumberColumn("Rank", width=50),
    "image": st.column_config.ImageColumn("Image", width=ROW_HEIGHT + 24),
    "given label": st.column_config.TextColumn("Given label", width=80),
    "predicted": st.column_config.TextColumn("Predicted", width=90,
                                             help="The model's label and how sure it is."),
    "what removing it does": st.column_config.TextColumn(
        "What removing it does" if removal else "Why it ranks here", width=420),
    "demo: true label": st.column_config.TextColumn("Demo: true label", width=115,
                                                    help="Filled in for the images whose "
                                                    "label the demo flipped."),
    "score": st.column_config.NumberColumn("Score", format="%.2e", help=(
        "Estimated change of validation loss if removed." if removal else
        "The method's score: lower = more suspicious.")),
    "sample id": st.column_config.TextColumn("Sample id", width="large"),
}
edited = st.data_editor(
    rows, hide_index=True, disabled=[c for c in rows.columns if c != "remove"],
    row_height=ROW_HEIGHT, height=(len(rows) + 1) * ROW_HEIGHT + 3, column_config=columns,
    key=f"editor-{run_row['id']}-{filters}-{page}-{version}")
now = (ticked - set(shown.sample_id)) | set(edited.loc[edited["remove"], "sample id"])
if now != ticked:
    session.set_ticks(now)
    st.rerun()
if len(shown):
    with st.expander("Look closer at one image of this page"):
        left, right = st.columns([1, 3])
        pick = right.selectbox("Image", range(len(shown)), key="look",
                               format_func=lambda i: f"rank {shown['rank'].iloc[i]} · "
                                                     f"{shown.sample_id.iloc[i]}")
        item = shown.iloc[min(pick, len(shown) - 1)]
        left.image(images.enlarge(data.images[position[item.sample_id]], 224), width=224)
        right.markdown(f"**Given label:** {item.label}  \n**Predicted:** {item.predicted}  \n"
                       f"{ranking.row_in_words(item).capitalize()}.")
        if item.sample_id in flipped:
            right.caption(f"Demo: the true label is {flipped[item.sample_id]}.")


export = table.drop(columns=["predicted"]).rename(columns={"influence": "score"})
st.download_button("Whole ranking (CSV)", export.to_csv(index=False),
                   file_name=f"{dataset_row['name']}-ranking-{method}.csv", mime="text/csv",
                   icon=":material/download:",
                   help="Every training image still in use, in this ranking's order: rank, "
                   "sample id, given and predicted label, the model's confidence and the score. "
                   "No image data.")
st.markdown(f"**{len(ticked)}** image{'s' * (len(ticked) != 1)} ticked. Ticks are kept while "
            "you page, filter or switch pages.")
st.page_link("views/retrain.py", label="Next: retrain without the ticked images and compare",
             icon=":material/arrow_forward:")
