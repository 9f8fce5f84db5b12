"""The web app's logic with Streamlit's AppTest: navigation, per-session state that survives page
switches and refreshes, background jobs re-attached, clear errors, sessions kept apart."""
import sqlite3

import pytest

from app.services import runner
from app.services.store import CANCELLED, DONE, FAILED, Store
from helpers import (QUICK_MODEL, button, edit, editor, make_zip, new_app, ok, score, session_of,
                     text, tick_and_clean, train, trained_in_app, wait_for_job)
import datasets
from influence import cleaning, labels as labels_module
from influence.config import RunConfig

pytestmark = pytest.mark.usefixtures("workspace")


def test_first_launch_preselects_the_offline_digits_and_every_page_renders():
    at = ok(new_app())
    assert at.selectbox(key="builtin").value == "digits"
    assert "Handwritten digits (1,797 images, 8×8)" in text(at)
    assert "Model:** none yet" in text(at)
    assert at.query_params["s"] in (session_of(at), [session_of(at)])  # the id sits in the URL
    for page, says in (("views/train.py", "Before you start"),
                       ("views/harmful.py", "Train a model on the current data set first"),
                       ("views/retrain.py", "Train a model and tick some images")):
        ok(at.switch_page(page).run())
        assert says in text(at), (page, text(at))


def test_train_score_tick_and_the_ticks_survive_pages_and_a_refresh():
    at = new_app()
    at, job = train(at)
    assert job.status == DONE, job.error
    assert "Validation accuracy" in [m.label for m in at.metric]
    run_id = at.session_state["app"]["run"]
    assert run_id == job.result["run"]

    at = score(at, "sgd-last")
    ok(at.run())
    assert "Ranked training images" in text(at)
    button(at, "Tick top 10").click().run()
    ok(at)
    assert "**Ticked:** 10 images" in text(at)
    ticked = set(at.session_state["app"]["ticks"][run_id])
    assert len(ticked) == 10

    at.switch_page("views/data.py").run()  # a page switch keeps them
    assert "**Ticked:** 10 images" in text(ok(at))
    at.switch_page("views/retrain.py").run()
    assert "You ticked **10** images" in text(ok(at))

    refreshed = ok(new_app(session_of(at)))  # a browser refresh: same id from the URL
    assert refreshed.session_state["app"]["run"] == run_id
    assert set(refreshed.session_state["app"]["ticks"][run_id]) == ticked

    at.switch_page("views/harmful.py").run()  # untick lives on page 3
    button(at, "Untick all").click().run()
    assert "**Ticked:** 0 images" in text(ok(at))


def test_a_rerun_or_page_switch_while_training_reattaches_instead_of_starting_twice():
    at = new_app()
    at.switch_page("views/train.py").run()
    at.number_input(key="epochs").set_value(200)  # long enough to still run below
    button(at.run(), "Start training").click().run()
    first = runner.active(session_of(at))
    assert first is not None and first.kind == "train"
    at.run()  # a rerun, a page switch and a refresh while it runs
    at.switch_page("views/data.py").run()
    at.switch_page("views/train.py").run()
    again = new_app(session_of(at)).switch_page("views/train.py").run()
    assert first.running, "the job should still run (200 epochs)"
    assert runner.jobs_of(session_of(at)) == [first]
    assert button(at, "Start training").disabled and button(again, "Start training").disabled
    assert any(b.label == "Cancel" for b in again.button)  # the live panel is attached again
    first.cancel()
    first.wait(60)
    assert first.status == CANCELLED
    ok(at.run())
    assert "Cancelled" in text(at)
    assert at.session_state["app"]["run"] is None  # back to no model: nothing half-made kept


def test_divergence_says_why_and_offers_a_smaller_learning_rate():
    at = new_app()
    at, job = train(at, epochs=3, lr=5.0, l2=1.0)  # (1 − η·α) = −4: θ explodes
    assert job.status == FAILED and job.suggested_lr == pytest.approx(0.5)
    assert "learning rate 5 is too high for this data: try 0.5" in text(at)
    assert at.session_state["app"]["run"] is None  # the failed run is not the current model
    button(at, "Use learning rate 0.5").click().run()
    assert at.number_input(key=f"lr-{QUICK_MODEL}").value == pytest.approx(0.5)
    ok(at)


def test_retrain_and_compare_shows_both_error_rates_and_a_history():
    at = new_app()
    at, _ = train(at)
    at.switch_page("views/harmful.py").run()
    at.radio(key="score_method").set_value("sgd-last")
    button(at.run(), "Compute influence").click().run()
    wait_for_job(at)
    at.run()
    tick_and_clean(at, 5)
    labels = [m.label for m in at.metric]
    assert {"Test error — before", "Test error — after cleaning"} <= set(labels)
    said = text(at)
    assert f"Against {cleaning.CONTROLS} [random rounds](glossary?term=random-controls) " \
           "(removing as many random images" in said
    assert "McNemar" in said
    verdict = Store().rounds()[-1]["verdict"]
    assert verdict["controls"] == cleaning.CONTROLS == len(verdict["control_errors"])
    assert f"**{verdict['sentence']}**" in said
    assert ("This round made the model better" in said) == verdict["better"]
    assert "History of this data set" in text(at)
    assert {"Test error — first", "Test error — second"} <= set(labels)  # any two, compared
    downloads = [d.proto.label for d in at.get("download_button")]
    assert downloads == ["Cleaned data set (ZIP)", "Removed images (CSV)"]
    rnd = Store().rounds()[-1]
    assert len(rnd["removed"]) == 5 and rnd["mode"] == "last" and rnd["method"] == "sgd-last"
    button(at, "Clean further from the cleaned model").click().run()
    ok(at)
    assert at.session_state["app"]["run"] == rnd["cleaned"]  # now scored and cleaned further
    assert "Find the harmful training images" in text(at)


def test_demo_switch_applies_at_once_and_remembers_the_flipped_ids():
    at = new_app()
    next(t for t in at.toggle if t.label.startswith("Demo:")).set_value(True).run()
    assert "Demo on:" in text(ok(at))
    at.switch_page("views/train.py").run()  # "Next" right away: the demo is not lost
    assert "training labels flipped" in text(ok(at))
    dataset = at.session_state["app"]["dataset"]
    row = Store().dataset(dataset)
    assert len(row["flipped"]) == round(0.1 * 1077)


def test_other_rankings_can_be_computed_next_to_sgd_influence_and_used_for_cleaning():
    """The baselines from influence.baselines, in the app: a label-noise ranking on the demo."""
    at = new_app()
    next(t for t in at.toggle if t.label.startswith("Demo:")).set_value(True).run()
    at, _ = train(at)
    run_id = at.session_state["app"]["run"]
    at.switch_page("views/harmful.py").run()
    at.radio(key="score_method").set_value("confident-learning")
    button(at.run(), "Compute this ranking").click().run()
    job = wait_for_job(at)
    assert job.status == DONE, job.error
    ok(at.run())
    said = text(at)
    assert "likely wrong label (confident learning)" in said
    assert "real retraining cannot check it" in said  # no trust check for a non-estimate
    assert not [b for b in at.button if b.label.startswith("Check against real retraining")]
    assert "Labels that look wrong (flagged by cleanlab)" in [m.label for m in at.metric]
    frame = Store().scores(run_id, "confident-learning")
    assert frame.influence.between(-1, 0).all() and frame.influence.is_monotonic_increasing
    flipped = Store().dataset(at.session_state["app"]["dataset"])["flipped"]
    found = len(set(frame.sample_id.head(len(flipped))) & flipped.keys())
    assert found > 3 * len(flipped) ** 2 / len(frame)  # far above chance (about 10%)
    assert f"**{len(set(frame.sample_id.head(10)) & flipped.keys())}** of them are in the " \
           "top 10" in said

    tick_and_clean(at, 5)
    rnd = Store().rounds()[-1]
    assert rnd["method"] == "confident-learning" and len(rnd["removed"]) == 5
    assert set(rnd["removed"]) == set(frame.sample_id.head(5))
    history = next(d.value for d in at.dataframe if "ranking" in d.value.columns)
    assert history.ranking.tolist() == ["likely wrong label (confident learning)"]

    at.switch_page("views/harmful.py").run()  # a second ranking: both can be viewed
    at.radio(key="score_method").set_value("sgd-last")
    button(at.run(), "Compute influence").click().run()
    wait_for_job(at)
    ok(at.run())
    assert set(Store().score_info(run_id)) == {"confident-learning", "sgd-last"}
    assert "Check against real retraining" in [b.label for b in at.button]


def test_uploads_good_and_bad():
    at = new_app()
    before = at.session_state["app"]["dataset"]
    at.radio(key="data_source").set_value("Upload a ZIP").run()
    at.file_uploader[0].set_value(("broken.zip", b"this is not a zip", "application/zip"))
    button(at.run(), "Use this upload").click().run()
    ok(at)
    assert any("This upload cannot be used" in e.value for e in at.error)
    assert at.session_state["app"]["dataset"] == before  # nothing lost or changed

    at.file_uploader[0].set_value(("pets.zip", make_zip(), "application/zip"))
    button(at.run(), "Use this upload").click().run()
    ok(at)
    assert at.session_state["app"]["dataset"] != before
    assert "pets" in text(at) and "8 images" in text(at)


def test_two_sessions_do_not_see_each_others_work():
    a, b = new_app(), new_app()
    assert session_of(a) != session_of(b)
    a, _ = train(a)
    assert a.session_state["app"]["run"] is not None
    b.run()
    assert b.session_state["app"]["run"] is None
    assert runner.latest(session_of(b)) is None
    assert "Model:** none yet" in text(b)
    b.switch_page("views/train.py").run()
    assert not any(e.label.startswith("Models trained") for e in b.expander)
    b.sidebar.toggle[0].set_value(True).run()  # other sessions' saved work, on request
    assert any(e.label.startswith("Models trained on this data set (1)") for e in b.expander)
    assert b.session_state["app"]["run"] is None  # seen, not taken over


def test_settings_survive_a_page_switch_without_widget_warnings():
    at = new_app()
    at.switch_page("views/train.py").run()
    at.number_input(key="epochs").set_value(7)
    at.selectbox(key="dtype").set_value("float64")
    at.run()
    at.switch_page("views/data.py").run()
    at.switch_page("views/train.py").run()
    ok(at)
    assert at.number_input(key="epochs").value == 7
    assert at.selectbox(key="dtype").value == "float64"
    assert not any("Session State" in str(w.value) for w in at.warning)


def test_a_torchvision_set_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "empty"))  # read from here, never download
    at = new_app()
    before = at.session_state["app"]["dataset"]
    at.selectbox(key="builtin").set_value("mnist").run()
    assert any("DATA_DIR" in i.value for i in at.info)  # said before trying
    button(at, "Use this data set").click().run()
    ok(at)
    assert any("was not found under" in e.value and "DATA_DIR" in e.value for e in at.error)
    assert at.session_state["app"]["dataset"] == before


def test_after_a_restart_an_interrupted_run_says_so(workspace):
    at = new_app()
    sid = session_of(at)
    store = Store()
    dataset = at.session_state["app"]["dataset"]
    row = store.new_run(dataset, "train", RunConfig(), sid)
    with sqlite3.connect(workspace / "store.sqlite") as db:  # its server process is gone
        db.execute("UPDATE runs SET owner = '999999999:gone' WHERE id = ?", (row["id"],))
    store.save_session_state(sid, {**at.session_state["app"], "run": row["id"]})
    store.recover()  # what the next server start does
    again = ok(new_app(sid).switch_page("views/harmful.py").run())
    assert "This run was interrupted" in text(again)
    again.switch_page("views/train.py").run()
    assert "This run was interrupted" in text(ok(again))


def test_the_yardstick_is_checked_listed_with_ids_left_out_of_the_query_or_corrected():
    """Validation labels with planted errors: page 3 lists every flagged one with its id,
    leaves them out of the query by default and says how many; one can be put back, another
    corrected in a new copy of the data set. The ranking is computed with that query."""
    at = new_app()
    digits = datasets.load("digits")
    val = digits.split(0.2, 0.2, 0).val
    labels = digits.labels.copy()
    wrong = val[:30]
    labels[wrong] = (labels[wrong] + 1) % 10
    noisy = digits.relabelled(labels, "30 validation labels wrong")
    row = Store().add_dataset(noisy, "digits, noisy validation", session_of(at))
    state = at.session_state["app"]
    Store().save_session_state(session_of(at), {**state, "dataset": row["id"],
                                                "datasets": [row["id"]]})
    at = new_app(session_of(at))
    at, job = train(at, epochs=10)
    at.switch_page("views/harmful.py").run()
    assert any("look wrong" in e.label for e in ok(at).expander)
    run_id = at.session_state["app"]["run"]
    check = labels_module.check_part(Store().open_run(run_id), "val")
    flagged = list(check.sample_id[check.flagged])
    hits = set(flagged) & {digits.ids[i] for i in wrong}
    assert len(hits) >= 15, len(hits)
    assert 25 < len(flagged) <= 50
    at.selectbox(key="per-page-val").set_value(50).run()
    shown = editor(ok(at), "val").value
    assert list(shown["sample id"]) == flagged  # every flagged one, with its id
    assert shown["left out of the query"].all()  # by default they leave the query
    assert (f"**{len(flagged)}** of the {len(check)} validation images are left out of the "
            f"[query](glossary?term=query)") in text(at)

    tested = editor(at, "test").value  # the test images: flagged ones marked, never changed
    assert ((tested.note == "the label may be wrong") == tested.flagged).all()
    assert "given label" in tested.columns and "true label" not in tested.columns

    kept, fixed = flagged[0], flagged[1]
    at = edit(at, "val", {0: {"left out of the query": False}, 1: {"decision": "accept"}})
    assert set(at.session_state["app"]["exclude"][run_id]) == set(flagged) - {kept}
    assert f"**{len(flagged) - 1}** of the {len(check)} validation images" in text(at)
    at.radio(key="score_method").set_value("sgd-last")
    button(at.run(), "Compute influence").click().run()
    assert wait_for_job(at).status == DONE
    info = Store().score_info(run_id)["sgd-last"]
    assert set(info["query"]) == set(flagged) - {kept}
    assert f"Computed with {len(flagged) - 1} validation images left out" in text(ok(at.run()))

    suggested = check.set_index("sample_id").suggested_label[fixed]
    assert "**1** validation or test label corrected" in text(at)
    button(at, "Save a copy of the data set with the 1 corrected label").click().run()
    new_row = Store().dataset(at.session_state["app"]["dataset"])
    assert new_row["id"] != row["id"] and "(1 labels corrected)" in new_row["name"]
    copy = Store().load_data(new_row["id"])
    i = copy.ids.index(fixed)
    assert copy.classes[copy.labels[i]] == suggested != noisy.classes[noisy.labels[i]]
    assert (copy.split(0.2, 0.2, 0).val == val).all()  # the same split


def test_how_many_to_remove_is_recommended_only_when_the_trust_check_passes(monkeypatch):
    from influence import kcurve

    real = kcurve.suggest

    def helps_at_20(*args, **kwargs):  # whatever the 1-epoch model says, a suggestion to act on
        found = real(*args, **kwargs)
        return {**found, "k": 20, "helps": True, "sentence": "Suggested: remove the top 20."}

    monkeypatch.setattr(kcurve, "suggest", helps_at_20)
    at = trained_in_app()
    at = score(at, "sgd-last")
    ok(at.run())
    assert "How many to remove?" in text(at) and "78 models, all at once" in text(at)
    assert at.number_input(key="top_k").value == 10
    button(at, "Compute how many to remove").click().run()
    job = wait_for_job(at)
    assert job.kind == "curve" and job.status == DONE, job.error
    band = job.result["band"]
    assert [r["k"] for r in band] == [0, 5, 10, 20, 50, 100, 200, 500]
    assert all(r["random_low_selection_loss"] <= r["random_high_selection_loss"]
               for r in band[1:])
    ok(at.run())
    said = text(at)
    assert "Suggested: remove the top 20." in said
    assert "not recommended on this data" in said  # not checked yet: shown, not followed
    assert at.number_input(key="top_k").value == 10
    sizes = next(d.value for d in at.dataframe if "beats random" in d.value.columns)
    assert sizes["remove top k"].tolist() == [5, 10, 20, 50, 100, 200, 500]

    run_id = at.session_state["app"]["run"]
    figures = {"method": "sgd-last", "n": 0, "groups": 20, "group_size": 45,
               "query_loss": 0.5, "group_spearman": 0.1, "group_p_value": 0.6,
               "group_p_greater": 0.3,
               "top_rows": [{"size": 9, "estimate": -0.01, "actual": 0.004}]}
    Store().set_trust(run_id, "sgd-last", figures)  # a trust check that fails
    ok(at.run())
    said = text(at)
    assert [e for e in at.error if e.icon == ":material/error:"
            and "Do not remove images by this ranking" in e.value]
    assert not [s for s in at.success if s.icon == ":material/verified:"]
    assert "Remove nothing by this ranking." in said and "does not predict" in said
    assert not [b for b in at.button if "recommended for removal" in b.label]
    assert at.number_input(key="top_k").value == 10

    Store().set_trust(run_id, "sgd-last", {  # one that passes
        **figures, "group_spearman": 0.8, "group_p_value": 0.0002, "group_p_greater": 0.0001,
        "top_rows": [{"size": 9, "estimate": -0.01, "actual": -0.012}]})
    ok(at.run())
    assert [s for s in at.success if s.icon == ":material/verified:"
            and "This ranking predicts real retraining on your data" in s.value]
    assert not at.error
    assert "Remove the top 20" in text(at)
    assert at.number_input(key="top_k").value == 20  # prefilled from the recommendation
    recommended = Store().scores(run_id, "sgd-last").sample_id.head(20)
    button(at, "Tick the 20 recommended for removal").click().run()
    assert set(at.session_state["app"]["ticks"][run_id]) == set(recommended)
    at.number_input(key="top_k").set_value(7).run()  # prefilled once: the user's K stays
    assert at.number_input(key="top_k").value == 7
    at.switch_page("views/data.py").run()  # page 1 states the selection part
    assert "**180** (about 50%, chosen by the seed) are held out as the *selection* part" \
        in text(ok(at))


def test_why_this_mistake_explains_ticks_retrains_and_shows_the_new_prediction():
    at = ok(new_app())
    at, _ = train(at, epochs=1)
    at.switch_page("views/retrain.py").run()
    ok(at)
    assert "Why this mistake?" in text(at) and "test images wrong" in text(at)
    test_id = at.selectbox(key="why_image").value
    at.radio(key="why_method").set_value("sgd-last")
    button(at.run(), "Explain this mistake").click().run()
    assert wait_for_job(at).status == DONE
    ok(at.run())
    said = text(at)
    assert "Pushed it towards this mistake" in said and "Helped it most" in said
    assert at.selectbox(key="why_image").value == test_id
    at.number_input(key="why_k").set_value(3)
    button(at.run(), "Tick the 3 that pushed it most").click().run()
    ticked = at.session_state["app"]["ticks"][at.session_state["app"]["run"]]
    assert len(ticked) == 3
    at.radio(key="mode").set_value("last")
    button(at.run(), "Retrain without the 3 ticked").click().run()
    assert wait_for_job(at).status == DONE
    ok(at.run())
    assert "After the latest retraining** (without 3 images)" in text(at)
    button(at, "Check this explanation against real retraining").click().run()
    assert wait_for_job(at).status == DONE
    ok(at.run())
    assert "the real change of this test image's loss" in text(at)
