"""Page 4 with Streamlit's AppTest: test images whose given label the label check doubts are
listed apart and the test error is given without them, the verdict names its tests and its
correction for rounds, and no caption calls a given label the true one."""
import pytest

import datasets
from app.services.store import DONE, Store
from helpers import (button, new_app, ok, score, session_of, text, tick_and_clean, train,
                     wait_for_job)
from influence import labels as labels_module, run_folder
from influence.cleaning import CONTROLS

pytestmark = pytest.mark.usefixtures("workspace")


def image_captions(at) -> list[str]:
    """The captions of every image on the page."""
    return [img.caption for element in at.get("image") for img in element.proto.imgs]


def noisy_test_labels(at, wrong: int = 30):
    """A copy of the digits with `wrong` test labels moved to the next class, made the current
    data set of the app's session; returns the app and the ids of the wrong ones."""
    digits = datasets.load("digits")
    test = digits.split(0.2, 0.2, 0).test[:wrong]
    labels = digits.labels.copy()
    labels[test] = (labels[test] + 1) % 10
    row = Store().add_dataset(digits.relabelled(labels, f"{wrong} test labels wrong"),
                              "digits, noisy test", session_of(at))
    state = at.session_state["app"]
    Store().save_session_state(session_of(at), {**state, "dataset": row["id"],
                                                "datasets": [row["id"]]})
    return new_app(session_of(at)), {digits.ids[i] for i in test}


def test_flagged_test_images_are_listed_apart_with_the_error_without_them():
    at, wrong = noisy_test_labels(new_app())
    at, job = train(at, epochs=10)
    assert job.status == DONE, job.error
    run_id = at.session_state["app"]["run"]
    at = score(at, "sgd-last")
    tick_and_clean(ok(at.run()), 5)

    check = labels_module.check_part(Store().open_run(run_id), "test")
    flagged = set(check.sample_id[check.flagged])
    assert len(flagged & wrong) >= 15, len(flagged & wrong)  # the check finds the planted ones
    said = text(at)
    assert f"flags]({'glossary?term=flagged'}) **{len(flagged)}** of the" in said
    store = Store()
    before = store.predictions(run_id).query("part == 'test'").set_index("sample_id")
    after = store.predictions(store.rounds()[-1]["cleaned"]).query(
        "part == 'test'").set_index("sample_id")
    kept = before.index.difference(list(flagged))
    for name, p in (("before", before), ("after cleaning", after)):
        error = float((p.predicted != p.label)[kept].mean())
        assert f"**{error:.2%}** {name}" in said  # the test error without the flagged ones

    mistakes = before[before.predicted != before.label]
    apart = len(set(mistakes.index) & flagged)
    assert apart and f"**The label may be wrong ({apart}):**" in said  # "why this mistake?"
    names = at.selectbox(key="why_image").options
    assert sum("(flagged: the label may be wrong)" in n for n in names) == apart
    doubtful = sorted(set(mistakes.index) & flagged)[0]
    at.selectbox(key="why_image").set_value(doubtful).run()
    suggested = check.set_index("sample_id").suggested_label[doubtful]
    assert f"flags this test image: its given label {check.set_index('sample_id').label[doubtful]}" \
        f" may be wrong; it suggests **{suggested}**" in text(ok(at))
    said = text(at)

    assert "true label" not in said.lower()
    captions = image_captions(at)
    assert captions and not any("true label" in c.lower() for c in captions)
    assert "Captions: given label: prediction before → after" in said
    assert "Captions: given label → the model's answer." in said


def test_the_verdict_names_its_tests_the_fair_controls_and_the_rounds():
    at, job = train(new_app(), epochs=2)
    at = score(at, "sgd-last")
    at.run()
    at.number_input(key="top_k").set_value(5)
    button(at.run(), "Tick top 5").click().run()
    at.switch_page("views/retrain.py").run()
    said = text(ok(at))  # before the round: the test it will use, and what it can reach
    assert f"t with {CONTROLS - 1} degrees of freedom, at 0.05" in said
    at.number_input(key="controls").set_value(1)
    said = text(ok(at.run()))
    assert "With 1 random control \"better than random\" cannot be shown" in said
    assert "counting alone at least 20" in said
    at.number_input(key="controls").set_value(10)
    said = text(ok(at.run()))
    assert "it would need 20 controls to go below 0.05" in said
    at.radio(key="mode").set_value("last")
    button(at.run(), "Retrain without the 5 ticked").click().run()
    assert wait_for_job(at).status == DONE
    said = text(ok(at.run()))
    v = Store().rounds()[-1]["verdict"]
    assert f"**{v['sentence']}**" in said
    assert "(glossary?term=mcnemar)" in said and "(glossary?term=holm)" in said
    assert "removing as many random images" in said
    assert ("flags none of the 360 test images" in said) != ("[flags](glossary?term=flagged)" in
                                                             said)  # said either way
    assert "no p-value is corrected for [rounds](glossary?term=rounds)" in said
    assert ("t with 9 degrees of freedom" in said) == (v["random_test"] == "prediction interval")

    button(at, "Retrain without the 5 ticked").click().run()  # a second round, same test set
    assert wait_for_job(at).status == DONE
    said = text(ok(at.run()))
    assert "2 cleaning rounds have been compared on these test images" in said
    assert "will be round 3 on these test images" in said


def test_an_impossible_estimate_is_never_shown_as_a_number_and_the_trust_check_colours_it():
    at, job = train(new_app(), epochs=2)
    run_id = at.session_state["app"]["run"]
    at = score(at, "sgd-last")
    tick_and_clean(ok(at.run()), 5)
    store = Store()
    removed = store.rounds()[-1]["removed"]
    scores = store.scores(run_id, "sgd-last")
    loss = store.run(run_id)["metrics"]["val_loss"]
    said = "\n".join(e.value for e in at.info)  # no trust check yet: grey, the estimate shown
    estimated = float(scores.set_index("sample_id").influence[removed].sum())
    assert f"by {abs(estimated):.3g}" in said and "has not been checked" in said

    scores.loc[scores.sample_id.isin(removed), "influence"] = -loss  # 5 × the whole loss
    run_folder.write_csv(scores, store.table_file(run_id, "scores", "sgd-last"))
    store.set_trust(run_id, "sgd-last", {"group_spearman": -0.29, "group_p_value": 0.2,
                                         "groups": 20, "group_size": 50, "tau": -0.29,
                                         "n": 10, "sign_agreement": 0.4})
    ok(at.run())
    said = "\n".join(e.value for e in at.error)
    assert "more than the whole loss, which is impossible" in said
    assert f"{5 * loss:.3g}" not in text(at) and "Do not remove images by this ranking" in said
    assert [e.proto.icon for e in at.error if "impossible" in e.value] == [":material/error:"]
    assert not any("impossible" in e.value for e in at.success)


def test_the_controls_are_named_as_the_fair_alternatives_and_what_p_they_can_reach():
    from app import words
    label, help_ = words.controls_label(3, 2), words.controls_help(3, 2)
    assert "2 random images the label check flags fixed to its label" in label
    assert "without 3 random images" in label and "random other label" not in label
    assert "never random wrong labels" in help_ and "removed instead of fixed" in help_
    assert words.controls_label(3, 0) == ("Random controls: retrain without 3 random images, "
                                          "this many times")
    first, third = words.before_running(20, 1), words.before_running(20, 3)
    assert "t with 19 degrees of freedom, at 0.05." in first and "would need" not in first
    assert "will be round 3" in third and "multiplied by 3" in third
    assert "at 0.0167" in third and "it would need 60 controls to go below 0.0167" in third
    assert "counting alone at least 20" in words.before_running(1, 1)
