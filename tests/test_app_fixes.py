"""Fixing labels in the web app (Streamlit's AppTest and influence.advice): page 3's review grid
of the label check's flagged training images (accept, reject, another label; class-pair filter;
search by id), what page 3 recommends and when it recommends no removal, page 4's retraining
with the accepted fixes, the per-class changes, the history and the exports."""
import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from app.services.store import Store
from datasets.builtin import load_digits
from datasets.export import to_zip
from helpers import (button, edit, editor, new_app, ok, score, text, train, trained_in_app,
                     wait_for_job)
from influence import advice

pytestmark = pytest.mark.usefixtures("workspace")


def stored_fixes(at) -> dict:
    app = at.session_state["app"]
    return app.get("fixes", {}).get(app["run"], {})


def review_train(at):
    """Page 3 after SGD-influence (fast) and the label check of the training images."""
    at = score(at, "sgd-last")
    button(at, "Run the label check on the training images").click().run()
    assert wait_for_job(at).status == "done"
    return ok(at.run())


def test_review_the_flagged_training_labels_accept_reject_another_label_filter_and_search():
    at = review_train(trained_in_app())
    run_id = at.session_state["app"]["run"]
    check = Store().scores(run_id, advice.CHECK)
    flagged = check[check.flagged]
    assert len(flagged) >= 3, "one epoch of logistic regression leaves some labels doubtful"
    assert not [b for b in at.button if b.label.startswith("Fix top")]  # never by removal rank
    said = text(at)
    pairs = advice.confused_pairs(check)
    assert pairs.sentence.iloc[0] in said  # "about 3 images labelled 1 look like 7"
    rec = advice.recommend(check, None, None)  # fixed by default only where the check is sure
    assert rec.fixes or rec.remove_flagged
    assert (f"Fix {len(rec.fixes)} label" in said) == bool(rec.fixes)
    assert (f"Remove or look at {len(rec.remove_flagged)} more flagged" in said) \
        == bool(rec.remove_flagged)
    shown = editor(at, "train").value
    assert shown.flagged.all() and list(shown["sample id"]) == list(flagged.sample_id[:10])
    assert (shown["label"] == flagged.suggested_label[:len(shown)].to_numpy()).all()
    assert (shown.decision == "undecided").all() and not stored_fixes(at)
    assert shown.recommended.isin(["accept", "remove or look"]).all()

    other = next(c for c in map(str, range(10))
                 if c not in (shown["given label"][2], shown["label"][2]))
    at = edit(at, "train", {0: {"decision": "accept"}, 1: {"decision": "reject"},
                            2: {"label": other}})
    ids = list(shown["sample id"])
    assert stored_fixes(at) == {ids[0]: shown["label"][0], ids[2]: other}
    now = editor(at, "train").value.set_index("sample id")
    assert now.loc[[ids[0], ids[1], ids[2]], "decision"].tolist() == ["accept", "reject", "accept"]
    assert "**2** accepted, **1** rejected" in text(at)

    pair = pairs.iloc[0]
    option = f"labelled {pair.given}, looks like {pair.looks_like} ({pair['count']})"
    at.selectbox(key="pair-train").set_value(option).run()
    only = editor(ok(at), "train").value
    assert len(only) == min(pair["count"], 10)  # a page of 10
    n = int(pair["count"])
    assert f"{n} image{'s' if n != 1 else ''} match" in text(at)
    assert (only["given label"] == pair.given).all()
    assert only["looks like"].str.startswith(f"{pair.looks_like} (").all()

    calm = check.sample_id[~check.flagged].iloc[0]  # a search finds unflagged images too
    at.text_input(key=f"search-train-{run_id}").set_value(calm).run()
    assert editor(ok(at), "train").value["sample id"].tolist() == [calm]

    at.switch_page("views/retrain.py").run()  # page 4 retrains with the accepted fixes
    assert "You fixed **2** labels" in text(ok(at))
    at.radio(key="mode").set_value("last")
    at.number_input(key="controls").set_value(3)
    button(at.run(), "Retrain with the 2 fixed labels").click().run()
    assert wait_for_job(at).status == "done"
    ok(at.run())
    last = Store().rounds()[-1]
    chosen = stored_fixes(at)
    assert last["fixes"] == chosen and last["removed"] == []
    assert last["verdict"]["relabelled"] == 2 and len(last["verdict"]["control_errors"]) == 3
    cleaned = Store().run(last["cleaned"])["config"]
    assert {sid: c for sid, (c, _) in cleaned["fixes"].items()} == {
        sid: [str(c) for c in range(10)].index(label) for sid, label in chosen.items()}
    said = text(at)
    assert "(fixing 2 random images the label check flags:" in said  # the fair controls
    assert "Removing the fixed images instead of fixing them gave" in said
    assert "What changed per class" in said
    assert "Fixed labels (CSV)" in [d.proto.label for d in at.get("download_button")]


def test_one_click_accepts_the_sure_fixes_another_ticks_the_unsure_page_4_retrains_both():
    at = new_app()  # the demo: 10 % of the training labels flipped, suggestions confident
    next(t for t in at.toggle if t.label.startswith("Demo:")).set_value(True).run()
    at, job = train(at, epochs=12, model="cnn-small")  # logistic regression is never sure
    assert job.status == "done", job.error
    at = review_train(at)
    run_id = at.session_state["app"]["run"]
    check = Store().scores(run_id, advice.CHECK)
    rec = advice.recommend(check, None, None)
    assert rec.fixes, "the check is sure of some suggested labels on this run"
    first = next(iter(rec.fixes))  # rejected by hand first
    at.text_input(key=f"search-train-{run_id}").set_value(first).run()
    at = edit(ok(at), "train", {0: {"decision": "reject"}})
    at.text_input(key=f"search-train-{run_id}").set_value("").run()
    [accept] = [b for b in ok(at).button if b.label.startswith("Accept the ")]
    assert accept.label == f"Accept the {len(rec.fixes)} recommended fixes (the check is sure)"
    accept.click().run()
    expected = {sid: v for sid, v in rec.fixes.items() if sid != first}
    assert stored_fixes(ok(at)) == expected  # the rejected one stays rejected
    assert at.session_state["app"]["review"][run_id]["train"] == {first: ""}
    assert not [b for b in at.button if b.label.startswith("Accept the ")]  # all decided
    shown = editor(at, "train").value.set_index("sample id")
    for sid in shown.index.intersection(list(expected)):
        assert shown.loc[sid, "decision"] == "accept" and shown.loc[sid, "label"] == expected[sid]
    assert f"**{len(expected)}** accepted" in text(at)

    # the flagged images the check is unsure of: one click ticks them; page 4 retrains both
    unsure = sorted(rec.remove_flagged)
    assert unsure, "the check is unsure of some flagged images on this run"
    [tick] = [b for b in at.button if b.label.startswith("Tick the ")
              and "unsure" in b.label]
    assert tick.label == (f"Tick the {len(unsure)} flagged images the check is unsure of for "
                          "removal")
    tick.click().run()
    assert sorted(ok(at).session_state["app"]["ticks"][run_id]) == unsure
    assert not [b for b in at.button if "unsure" in b.label]  # all ticked
    at.switch_page("views/retrain.py").run()
    at.radio(key="mode").set_value("last")
    at.number_input(key="controls").set_value(2)
    button(at.run(), f"Retrain with the {len(expected)} fixed labels and without the "
                     f"{len(unsure)} ticked images").click().run()
    assert wait_for_job(at).status == "done"
    ok(at.run())
    last = Store().rounds()[-1]
    assert last["fixes"] == expected and sorted(last["removed"]) == unsure


# --- the logic under the view -----------------------------------------------------------------
def effects_table():
    return pd.DataFrame({"sample_id": ["a", "b", "c"], "label": ["0", "1", "2"],
                         "best_label": ["1", "2", "0"], "effect_best": [-0.3, -0.2, -0.1],
                         "effect_to_0": [0.0, 0.5, -0.1], "effect_to_1": [-0.3, 0.0, 0.2],
                         "effect_to_2": [0.1, -0.2, 0.0]})


def test_suggestions_prefer_the_label_check_and_mark_agreement():
    check = pd.DataFrame({"sample_id": ["a", "b", "c"], "suggested_label": ["1", "0", "2"]})
    s = advice.suggestions(["a", "b", "c"], ["0", "1", "2"], effects_table(), check)
    assert s.agree.tolist() == [True, False, False]
    assert s.suggested.tolist() == ["1", "0", ""]  # c: the check keeps its label
    assert s.action.tolist() == ["fix", "fix", "remove"]
    assert s.suggested_effect.iloc[:2].tolist() == [-0.3, 0.5]
    alone = advice.suggestions(["a", "b"], ["0", "1"], effects_table(), None)
    assert alone.suggested.tolist() == ["1", "2"] and not alone.agree.any()
    ticks, chosen = advice.fix_top(["a", "b", "c"], s, {"b"}, {"c": "1"})
    assert ticks == {"c"} and chosen == {"a": "1", "b": "0"}


def test_edits_of_the_fix_view_remove_fix_or_keep():
    shown = pd.DataFrame({"sample id": ["a", "b", "c", "d"], "given label": ["0", "1", "2", "3"],
                          "action": ["keep", "keep", "fix", "remove"],
                          "fix to": ["1", "2", "0", "4"]})
    edited = shown.copy()
    edited["action"] = ["remove", "keep", "keep", "fix"]
    edited["fix to"] = ["1", "5", "0", "3"]  # b: another label on a kept row fixes it
    ticks, chosen = advice.apply_edits(edited, shown, {"d"}, {"c": "0"})
    assert ticks == {"a"} and chosen == {"b": "5"}  # d: a fix to its own label keeps it


def test_per_class_changes_fixes_csv_and_the_demo_count():
    old = {"a": "0", "b": "1", "c": "1"}
    table = advice.per_class(["0", "1", "2"], old, ["a"], {"b": "2", "c": "0"}).set_index("class")
    assert table.loc["0"].tolist() == [1, 0, 1, 0]
    assert table.loc["1"].tolist() == [0, 2, 0, -2]
    assert table.loc["2"].tolist() == [0, 0, 1, 1]
    csv = advice.fixes_csv({"a": "2", "b": "0"}, {"a": "0", "b": "1"}, effects_table())
    assert csv.columns.tolist() == ["sample_id", "old_label", "new_label", "estimated_effect"]
    assert csv.estimated_effect.tolist() == [0.1, 0.5]
    assert advice.fixes_csv({"a": "2"}, {"a": "0"}, None).estimated_effect.isna().all()
    flipped = {"a": "2", "b": "3", "d": "1"}  # sample id → true label
    assert advice.demo_counts(flipped, ["d"], {"a": "2", "b": "0", "c": "1"}) == {
        "removed": 1, "fixed": 2, "fixed_true": 1}


def test_the_cleaned_zip_puts_fixed_images_in_their_new_class_folder():
    data = load_digits().subset(range(20))
    position = {sid: i for i, sid in enumerate(data.ids)}
    sid = data.ids[3]
    new = (data.labels[3] + 1) % 10
    fixed = advice.relabelled(data, position, {"fixes": {sid: [int(new), 0]}})
    assert fixed.labels[3] == new and (np.delete(fixed.labels, 3) == np.delete(data.labels, 3)).all()
    names = zipfile.ZipFile(io.BytesIO(to_zip(fixed))).namelist()
    assert any(n.startswith(f"{data.classes[new]}/") and n.endswith(f"{sid}.png") or
               n == f"{data.classes[new]}/{sid}.png" for n in names), names[:5]
