"""Page 4: retrain without the ticked images (counterfactual SGD), compare with the model before
and with removing as many random images, keep the history, export the cleaned data."""
import numpy as np
import pandas as pd
import streamlit as st

from app import charts, images, panels, session, words
from app.sections import explain as why
from app.sections import fixes
from app.services import jobs, runner, timing
from app.services.store import DONE
from datasets import DataError
from datasets.export import to_zip
from influence import advice, cleaning, compare, methods
from influence.config import RunError

st.title("4 · Retrain without them and compare")
st.caption("The model is trained again on exactly the same SGD schedule — same seed, same "
           "starting point, same batches — only without the images you ticked. Then the test "
           "images, which took no part in choosing them, tell whether the model got better.")

dataset_row = session.current_dataset_row()
run_row = session.current_run_row()
if dataset_row is None or run_row is None or run_row["dataset"] != dataset_row["id"] or \
        not session.usable(run_row):
    panels.need("Train a model and tick some images on page 3 first.", "views/harmful.py",
            "Go to 3 · Harmful images")
data, position = session.data_of(dataset_row["id"])
store = session.store()
ticked = sorted(session.ticks())
fixed = session.fixes(run_row["id"], set(ticked))  # sample id → new label
method = session.method()
busy = runner.active(session.sid()) is not None
flipped = dataset_row.get("flipped") or {}
SPLIT = ("seed", "val_fraction", "test_fraction")  # the same values: the same test images


def rounds_on_test_images() -> list[dict]:
    """The finished cleaning rounds of this data set, of any session, on the current model's
    test images (the same split): each of them looked at these test images once."""
    same = {k: (run_row["config"] or {}).get(k) for k in SPLIT}
    return [r for r in store.rounds(dataset_row["id"]) if r["status"] == DONE and
            {k: (store.run(r["base"])["config"] or {}).get(k) for k in SPLIT} == same]


# --- retrain ---------------------------------------------------------------------------------
st.subheader("Retrain")
if not ticked and not fixed:
    st.info("No image is ticked or fixed yet: tick the ones to remove on page 3, or fix their "
            "labels there.")
    st.page_link("views/harmful.py", label="Go to 3 · Harmful images",
                 icon=":material/arrow_back:")
else:
    demo = f" — {len(set(ticked) & flipped.keys())} of them have a flipped label" \
        if flipped else ""
    if ticked:
        st.markdown(f"You ticked **{len(ticked)}** image{'s' * (len(ticked) != 1)}{demo}:")
    shown = ticked[:32]
    images.image_grid(data, [position[i] for i in shown],
                      [data.classes[data.labels[position[i]]] for i in shown], per_row=16,
                      side=40)
    if len(ticked) > len(shown):
        st.caption(f"… and {len(ticked) - len(shown)} more.")
    fixes.show_fixed(data, position, fixed, flipped)
    guess = session.estimate(dataset_row["id"], run_row["config"])
    epochs = run_row["config"]["epochs"]
    c1, c2 = st.columns(2)
    mode = c1.radio("Retrain", ["all", "last"], key=session.remember("mode", "all"), format_func={
        "all": f"all {epochs} epochs without them — the exact counterfactual "
               f"({words.seconds(guess['seconds_retrain'])})",
        "last": f"only the last epoch without them — faster "
                f"({words.seconds(guess['seconds_retrain_last'])})"}.get)
    c1.caption(f"{words.term('retrain-mode', 'All or last epoch?')} All is what page 3's exact "
               "ranking estimates; last is quicker and what its fast ranking estimates.")
    controls = c2.number_input(
        words.controls_label(len(ticked), len(fixed)), 0,
        100, key=session.remember("controls", cleaning.CONTROLS),
        help=words.controls_help(len(ticked), len(fixed)))
    took = timing.round_seconds(guess, int(controls), mode)
    more = took - timing.retrain_seconds(guess, mode)
    c2.caption(f"The controls take {words.seconds(more)} more"
               f"{words.on_cores(guess['workers']) if controls else ''}. "
               + words.before_running(int(controls), len(rounds_on_test_images()) + 1)
               + f" {cleaning.CONTROLS} controls are the default: with them the prediction-"
               "interval test calls a cleaned error better when it lies "
               f"{cleaning.interval_threshold():.1f} of the controls' standard deviations "
               "below their mean (1.8 with 20), at a quarter of the time.")
    if warn := timing.long_warning(took, "retrain the last epoch only, or fewer controls"):
        st.warning(warn, icon=":material/timer:")
    if st.button(words.retrain_button(len(ticked), len(fixed)),
                 type="primary", disabled=busy, icon=":material/restart_alt:"):
        try:
            job = jobs.start_cleaning(store, session.sid(), run_row["id"], ticked, mode, method,
                                      int(controls),
                                      seed=run_row["config"]["seed"]
                                      + len(store.rounds(dataset_row["id"])),
                                      fixes=fixed)
            session.state()["round"] = job.result["round"]
            session.save()
            st.rerun()
        except (runner.Busy, RunError, DataError) as e:
            panels.busy_error(e)

job = runner.latest(session.sid(), "clean")
if job is not None and store.round(job.result["round"])["base"] == run_row["id"] and (
        job.running or job.status != DONE):
    panels.job_panel("clean")
    panels.job_outcome(job)


# --- comparing two models ------------------------------------------------------------------------
def test_part(run_id: str) -> pd.DataFrame:
    preds = session.predictions(run_id)
    return preds[preds.part == "test"].set_index("sample_id")


def flagged_test_ids() -> set[str]:
    """The test images the label check flags, by the current model's own probabilities (out of
    sample for them; page 3 computes the same check, cached)."""
    check = session.label_check(run_row["id"], "test")
    return set(check.sample_id[check.flagged])


def compare_models(run_rows: dict[str, dict], key: str) -> None:
    """Test error, per-class error, confusion matrices and the images that changed, for models
    named by the keys of `run_rows` (the first is the reference)."""
    names = list(run_rows)
    parts = {name: test_part(r["id"]) for name, r in run_rows.items()}
    errors = [r["metrics"]["test_error"] for r in run_rows.values()]
    cols = st.columns(len(names) + 1)
    mistakes = [int((p.predicted != p.label).sum()) for p in parts.values()]
    for i, (name, err) in enumerate(zip(names, errors)):
        change = mistakes[i] - mistakes[0]
        delta = None if i == 0 else (f"{change:+d} mistake{'s' * (abs(change) != 1)}"
                                     if change else "no change")
        cols[i].metric(f"Test error — {name}", f"{err:.2%}", delta, delta_color="inverse"
                       if change else "off", delta_arrow="auto" if change else "off")
    n_test = len(parts[names[0]])
    cols[-1].metric("Test images", f"{n_test:,}")
    suspect = flagged_test_ids() & set(parts[names[0]].index)
    if suspect:
        without = [float((p.predicted != p.label).drop(index=list(suspect)).mean())
                   for p in parts.values()]
        st.markdown(f"The {words.term('label-check', 'label check')} "
                    f"{words.term('flagged', 'flags')} **{len(suspect)}** of the {n_test:,} test "
                    "images: their given label may be wrong, so a \"mistake\" on them may be "
                    "a right answer. **Without them**, the test error is "
                    + " and ".join(f"**{e:.2%}** {name}" for name, e in zip(names, without))
                    + f" (on {n_test - len(suspect):,} test images). The figures above and the "
                    "tests below count every test image with its given label.")
    else:
        st.caption(f"The {words.term('label-check', 'label check')} flags none of the "
                   f"{n_test:,} test images: their given labels look right to the model.")
    colours = [charts.GREY, charts.GREEN, charts.ORANGE][:len(names)]
    left, right = st.columns(2)
    left.plotly_chart(charts.test_error_chart(names, errors, colours), key=f"{key}-errors")
    right.plotly_chart(charts.class_error_chart(parts, data.classes, colours),
                       key=f"{key}-per-class")

    with st.expander("Confusion matrices"):
        st.plotly_chart(charts.confusion_chart(parts, data.classes), key=f"{key}-confusion")
        st.caption("Rows: the given label; columns: what the model said. The diagonal counts "
                   "answers that agree with the given label.")

    before, after = parts[names[0]], parts[names[1]]
    ok_before = before.predicted == before.label
    ok_after = (after.predicted == after.label).reindex(before.index)
    for title, ids in ((f"Test images that became right ({names[1]})",
                        before.index[~ok_before & ok_after]),
                       (f"Test images that became wrong ({names[1]})",
                        before.index[ok_before & ~ok_after])):
        ids = sorted(ids, key=lambda i: i in suspect)  # the flagged ones last, marked
        marked = sum(i in suspect for i in ids)
        st.markdown(f"**{title}: {len(ids)}**"
                    + (f" — {marked} of them flagged: the label may be wrong" if marked else ""))
        ids = ids[:24]
        if ids:
            images.image_grid(data, [position[i] for i in ids],
                              [("⚑ " if i in suspect else "")
                               + f"{data.classes[int(before.label[i])]}: "
                               f"{data.classes[int(before.predicted[i])]}→"
                               f"{data.classes[int(after.predicted[i])]}" for i in ids],
                              per_row=8, side=96)
    st.caption("Captions: given label: prediction before → after"
               + ("; ⚑ the label check flags the image (the label may be wrong)." if suspect
                  else "."))


def verdict_of(chosen: dict) -> dict:
    """The round's statistics, restated for the rounds compared on these test images so far
    (compare.verdict_for_rounds); a round saved before they were kept gets them from its saved
    predictions (and its one random control run)."""
    rounds = max(1, len(rounds_on_test_images()))
    if chosen.get("verdict"):
        return compare.verdict_for_rounds(chosen["verdict"], rounds)
    before, after = test_part(run_row["id"]), test_part(chosen["cleaned"]).reindex(
        test_part(run_row["id"]).index)
    control = store.run(chosen["control"]) if chosen.get("control") else None
    errors = [control["metrics"]["test_error"]] if control and session.usable(control) else []
    return compare.cleaning_verdict(before.predicted == before.label,
                                    after.predicted == after.label, errors, rounds)


def summary(chosen: dict, v: dict) -> None:
    """The outcome of a round in a few sentences, its random controls, and the estimate."""
    removed, changed = chosen["removed"], chosen.get("fixes") or {}
    k = len(removed)
    lines = words.verdict(v)
    if flipped:
        hits = len(set(removed) & flipped.keys())
        lines.append(f"*Demo:* {hits} of the {k} removed images had a flipped label "
                     f"({len(flipped)} were flipped in all)"
                     + (f"; {words.demo_fixes(flipped, removed, changed)}." if changed else "."))
    st.markdown("  \n".join(lines))
    ranking = methods.get(chosen["method"]) if chosen["method"] else None
    if ranking and ranking.estimates_removal and "query_change" in v and \
            chosen["method"] in store.score_info(run_row["id"]):
        scores = session.scores(run_row["id"], chosen["method"]).set_index("sample_id").influence
        predicted = float(scores.reindex(removed).sum()) + advice.estimated_total(
            changed, session.relabel(run_row["id"], chosen["method"]))
        if np.isfinite(predicted):  # (fixes without relabel effects have no estimate)
            estimate(ranking, predicted, v["query_change"],
                     store.score_info(run_row["id"])[chosen["method"]].get("trust"),
                     words.round_action(k, len(changed)).lower() if changed else "removing them")
    fixes.show_per_class(data, position, run_row["config"], removed, changed)
    if v["controls"]:
        st.plotly_chart(charts.controls_chart(v), key=f"controls-{chosen['id']}")


ALERTS = {"pass": st.success, "unsure": st.warning, "fail": st.error, "none": st.info}


def estimate(ranking, predicted: float, actual: float, trust: dict | None, what: str) -> None:
    """The ranking's estimate of the round next to what retraining did, in the colour and with
    the icon of its trust check (advice.trust_verdict); an impossible estimate (a drop larger
    than the validation loss itself) is named, never shown as a number."""
    loss = (trust or {}).get("query_loss") or run_row["metrics"]["val_loss"]
    verdict = advice.trust_verdict(trust, loss)
    did = (f"retraining {'lowered' if actual < 0 else 'raised'} it by {abs(actual):.3g}"
           f" (from {loss:.3g})")
    if advice.possible_estimate(predicted, loss) is None:
        said = (f"{ranking.name} estimated that {what} would lower the validation loss by more "
                f"than the whole loss, which is impossible (a loss cannot fall below 0), so its "
                f"number is not shown: on this run its estimates are off by more than their own "
                f"size. In fact {did}.")
    else:
        said = (f"{ranking.name} estimated that {what} would "
                f"{'lower' if predicted < 0 else 'raise'} the validation loss by "
                f"{abs(predicted):.3g}; {did}.")
    ALERTS[verdict.level](f"{said}  \n**{words.term('trust-check', 'Trust check')}:** "
                          f"{verdict.sentence}", icon=verdict.icon)


# --- the latest round of this model -------------------------------------------------------------
number = {r["id"]: i for i, r in enumerate(store.rounds(dataset_row["id"]), 1)}  # per data set
rounds = [r for r in store.rounds(dataset_row["id"])
          if r["base"] == run_row["id"] and r["status"] == DONE]
cleaning_now = job is not None and job.running
if rounds and cleaning_now:
    st.caption("The results of earlier rounds are shown again when this one has finished.")
if rounds and not cleaning_now:  # never an earlier round's result under a new round's job
    st.divider()
    st.subheader("Before and after")
    wanted = session.state().get("round")
    index = next((i for i, r in enumerate(rounds) if r["id"] == wanted), len(rounds) - 1)
    if len(rounds) > 1:
        index = st.selectbox("Cleaning round", range(len(rounds)), index=index,
                             format_func=lambda i: f"Round {number[rounds[i]['id']]}: "
                             f"{len(rounds[i]['removed'])} removed"
                             + (f", {len(rounds[i]['fixes'])} fixed" if rounds[i].get("fixes")
                                else ""), key="round_pick")
    chosen = rounds[index]
    models = {"before": run_row, "after cleaning": store.run(chosen["cleaned"])}
    summary(chosen, verdict_of(chosen))
    compare_models(models, f"round-{chosen['id']}")

    # --- export -----------------------------------------------------------------------------------
    st.subheader("Export")
    cleaned = models["after cleaning"]
    removed = list((cleaned["config"] or {}).get("removed") or {})
    keep = np.setdiff1d(np.arange(len(data)), [position[i] for i in removed])

    def cleaned_zip() -> bytes:
        return to_zip(advice.relabelled(data, position, cleaned["config"]).subset(keep))

    ranking = session.scores(run_row["id"], chosen["method"]) if chosen["method"] in \
        store.score_info(run_row["id"]) else None
    table = pd.DataFrame({"sample_id": removed,
                          "label": [data.classes[data.labels[position[i]]] for i in removed]})
    if ranking is not None:
        ranked = ranking.assign(rank=np.arange(1, len(ranking) + 1)).set_index("sample_id")
        score = "influence" if methods.get(chosen["method"]).estimates_removal else "score"
        table[score] = ranked.influence.reindex(removed).to_numpy()
        table["rank"] = ranked["rank"].reindex(removed).to_numpy()
        table["method"] = chosen["method"]
    if flipped:
        table["true_label_demo"] = [flipped.get(i, "") for i in removed]
    c1, c2, c3 = st.columns(3)
    c1.download_button("Cleaned data set (ZIP)", cleaned_zip,
                       file_name=f"{dataset_row['name']}-cleaned.zip", mime="application/zip",
                       icon=":material/download:", width="stretch")
    c1.caption(f"{len(keep):,} images in one folder per class (fixed ones in their new "
               "class), ready to upload again.")
    c2.download_button("Removed images (CSV)", table.to_csv(index=False),
                       file_name=f"{dataset_row['name']}-removed.csv", mime="text/csv",
                       icon=":material/download:", width="stretch")
    c2.caption(f"The {len(removed)} removed ids with their labels and scores.")
    fixes.fixes_download(c2, dataset_row["name"], data, position, run_row, chosen)
    if c3.button("Clean further from the cleaned model", width="stretch",
                 icon=":material/cleaning_services:"):
        session.set_run(cleaned["id"])
        st.switch_page("views/harmful.py")
    c3.caption("Makes the cleaned model the current one: score it on page 3, remove more.")

# --- history -------------------------------------------------------------------------------------
history = session.visible(store.rounds(dataset_row["id"]))
if history:
    st.divider()
    st.subheader("History of this data set")

    def error_of(run_id):
        if not run_id:
            return float("nan")
        return (store.run(run_id).get("metrics") or {}).get("test_error", float("nan"))

    def random_error(r: dict) -> float:
        """The mean test error of the round's random removals (one control run before R)."""
        if (r.get("verdict") or {}).get("control_errors"):
            return float(np.mean(r["verdict"]["control_errors"]))
        return error_of(r["control"])

    looked = max(1, len(rounds_on_test_images()))

    def claims(r: dict) -> dict:
        """Which of the round's two claims pass, restated for the rounds compared so far."""
        if not r.get("verdict"):
            return {"better (claims passed)": "—"}
        v = compare.verdict_for_rounds(r["verdict"], looked)
        return {"better (claims passed)": "yes (both)" if v["better"] else
                "no (than before only)" if v["better_than_before"] else
                "no (than random only)" if v["better_than_random"] else "no (neither)"}

    st.dataframe(pd.DataFrame([{
        "round": number[r["id"]], "from model": words.run_label(store.run(r["base"])),
        "removed": len(r["removed"]), "fixed": len(r.get("fixes") or {}),
        "ranking": methods.get(r["method"]).title if r["method"] else "—",
        "retrained": "all epochs" if r["mode"] == "all" else "last epoch",
        "test error before": error_of(r["base"]), "after": error_of(r["cleaned"]),
        "random removal": random_error(r),
        **claims(r),
        "status": r["status"]}
        for r in history]), hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="percent")
            for c in ("test error before", "after", "random removal")})
    st.caption(f"{words.term('better', 'Better')}: better than before and better than random, "
               f"each at {compare.ALPHA:g}, "
               + (f"with every p-value multiplied by the {looked} "
                  f"{words.term('rounds', 'rounds')} compared on these test images so far."
                  if looked > 1 else f"one {words.term('rounds', 'round')} so far on these test "
                  "images (each later round multiplies every p-value by the count)."))
    done = [r for r in session.visible(store.runs(dataset_row["id"])) if session.usable(r)]
    if len(done) >= 2:
        with st.expander("Compare any two models of this data set"):
            c1, c2 = st.columns(2)
            a = c1.selectbox("First", range(len(done)), index=len(done) - 1, key="cmp_a",
                             format_func=lambda i: words.run_label(done[i]))
            b = c2.selectbox("Second", range(len(done)), index=0, key="cmp_b",
                             format_func=lambda i: words.run_label(done[i]))
            if a != b:
                compare_models({"first": done[a], "second": done[b]}, "history")
            else:
                st.info("Pick two different models.")

# --- why this mistake? (app/sections/explain.py) -------------------------------------------------
st.divider()
why.show(run_row, dataset_row)
