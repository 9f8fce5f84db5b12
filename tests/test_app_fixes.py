"""Fixing labels in the web app (Streamlit's AppTest and influence.advice): page 3's "fix labels"
view with SGD-influence's relabel effects from the same scoring job and the label check's label,
"Fix top K to their suggested labels", page 4's retraining with removals and fixes together,
the per-class changes, the history and the exports."""
import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from app.services.store import Store
from datasets.builtin import load_digits
from datasets.export import to_zip
from helpers import button, ok, text, trained_in_app, wait_for_job
from influence import advice

pytestmark = pytest.mark.usefixtures("workspace")


def score(at, method: str):
    """Page 3: compute a ranking and wait for it."""
    at.switch_page("views/harmful.py").run()
    at.radio(key="score_method").set_value(method)
    button(at.run(), "Compute").click().run()
    assert wait_for_job(at).status == "done"
    return ok(at.run())


def fix_view(at) -> pd.DataFrame:
    """The rows page 3's fix view shows (its data editor)."""
    return next(d.value for d in at.dataframe if "fix to" in d.value.columns)


def stored_fixes(at) -> dict:
    app = at.session_state["app"]
    return app.get("fixes", {}).get(app["run"], {})


def test_fix_top_k_to_sgd_labels_then_retrain_with_the_fixes_and_export_them():
    at = score(trained_in_app(), "sgd-last")
    run_id = at.session_state["app"]["run"]
    store = Store()
    effects = store.relabel(run_id, "sgd-last")  # kept with the scores, from the same job
    ranking = store.scores(run_id, "sgd-last")
    assert effects is not None and len(effects) == len(ranking)
    assert set(effects.sample_id) == set(ranking.sample_id)
    assert (effects.best_label != effects.label).all()
    assert "Fix labels instead of removing — 0 fixed" in [e.label for e in at.expander]
    shown = fix_view(at)
    top = effects.set_index("sample_id").loc[shown["sample id"]]
    assert (shown["SGD-influence's label"] == top.best_label.to_numpy()).all()
    assert (shown["fix to"] == top.best_label.to_numpy()).all()  # the default: the suggestion
    assert (shown.action == "keep").all() and (shown["label check's label"] == "").all()
    assert shown["what it does"].iloc[0].startswith(
        f"relabelling as {top.best_label.iloc[0]} is estimated to ")
    assert "; removing it" in shown["what it does"].iloc[0]

    at.number_input(key="top_k").set_value(5)
    button(at.run(), "Fix top 5 to their suggested labels").click().run()
    ok(at)
    chosen = stored_fixes(at)
    best = effects.set_index("sample_id").best_label
    assert list(chosen) == sorted(ranking.sample_id.head(5))  # the ranking's top 5 …
    assert all(best[sid] == label for sid, label in chosen.items())  # … to SGD's best label
    assert "Fix labels instead of removing — 5 fixed" in [e.label for e in at.expander]

    at.switch_page("views/retrain.py").run()
    assert "You fixed **5** labels" in text(ok(at))
    at.radio(key="mode").set_value("last")
    at.number_input(key="controls").set_value(3)
    button(at.run(), "Retrain with the 5 fixed labels").click().run()
    assert wait_for_job(at).status == "done"
    ok(at.run())
    last = store.rounds()[-1]
    assert last["fixes"] == chosen and last["removed"] == []
    assert last["verdict"]["relabelled"] == 5 and len(last["verdict"]["control_errors"]) == 3
    cleaned = store.run(last["cleaned"])["config"]
    assert {sid: c for sid, (c, _) in cleaned["fixes"].items()} == {
        sid: [str(c) for c in range(10)].index(label) for sid, label in chosen.items()}
    said = text(at)
    assert "(fixing 5 random images the label check flags:" in said  # the fair controls
    assert "Removing the fixed images instead of fixing them gave" in said
    assert "What changed per class" in said
    assert "Fixed labels (CSV)" in [d.proto.label for d in at.get("download_button")]
    history = [d.value for d in at.dataframe if "fixed" in d.value.columns]
    assert history and history[-1]["fixed"].tolist() == [5]


def test_with_the_label_check_its_label_is_suggested_and_kept_labels_are_removed():
    at = score(trained_in_app(), "sgd-last")
    at = score(at, "confident-learning")
    run_id = at.session_state["app"]["run"]
    check = Store().scores(run_id, "confident-learning").set_index("sample_id")
    at.number_input(key="top_k").set_value(30)
    button(at.run(), "Fix top 30 to their suggested labels").click().run()
    ok(at)
    chosen, ticked = stored_fixes(at), set(at.session_state["app"]["ticks"][run_id])
    assert len(chosen) + len(ticked) == 30 and not chosen.keys() & ticked
    assert chosen, "the label check gives another label to some of its top 30"
    for sid, label in chosen.items():
        assert label == check.suggested_label[sid] != check.label[sid]
    for sid in ticked:
        assert check.suggested_label[sid] == check.label[sid]
    shown = fix_view(at)  # the first page of the ranking, as the fix view shows it
    assert (shown["label check's label"] == check.suggested_label[shown["sample id"]].to_numpy()
            ).all()
    agree = shown["label check's label"] == shown["SGD-influence's label"]
    assert ((shown.agree == "✓ agree") == agree).all()
    for _, row in shown.iterrows():
        sid = row["sample id"]
        assert row.action == ("fix" if sid in chosen else "remove" if sid in ticked else "keep")
        if sid in chosen:
            assert row["fix to"] == chosen[sid]


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
