"""Page 3's pieces that need no running app: the k-curve chart's axis, and the review grid's
rows, filters and decisions (app.sections.review)."""
import numpy as np
import pandas as pd

from app import charts

KS = [0, 5, 10, 20, 50, 100, 200, 500]


def band(ks=KS) -> pd.DataFrame:
    rows = []
    for k in ks:
        row = {"k": k, "selection_loss": 0.5 - k / 5000, "selection_error": 0.1 + k / 1e4}
        for what in ("selection_loss", "selection_error"):
            for part, shift in (("mean", 0.0), ("low", -0.02), ("high", 0.02)):
                row[f"random_{part}_{what}"] = np.nan if k == 0 else 0.5 + shift
        rows.append(row)
    return pd.DataFrame(rows)


def test_the_k_curve_spreads_its_points_and_marks_the_suggestion_among_them():
    for k in (200, 500, 5):
        fig = charts.k_curve_chart(band(), k)
        xs = {tuple(np.asarray(t.x).tolist()) for t in fig.data}
        assert xs == {tuple(range(len(KS)))}  # evenly spaced positions, one per size
        assert list(fig.layout.xaxis.ticktext) == [str(k) for k in KS]
        marks = [s.x0 for s in fig.layout.shapes]
        assert marks == [KS.index(k)] * 2  # on the point of that size, not at x = k
        assert fig.layout.xaxis.range[1] < len(KS)
    assert not charts.k_curve_chart(band(), 7).layout.shapes  # not a size tried: no mark


# --- the review grid's logic ---------------------------------------------------------------------
def check_frame() -> pd.DataFrame:
    """A label check's rows: likeliest errors first."""
    return pd.DataFrame({
        "sample_id": ["a1", "b2", "c3", "d4", "e5"], "label": ["1", "1", "4", "3", "7"],
        "influence": [-0.9, -0.8, -0.7, -0.1, -0.05],
        "flagged": [True, True, True, False, False],
        "suggested_label": ["7", "7", "9", "3", "7"],
        "suggested_p": [0.9, 0.8, 0.7, 0.95, 0.99]})


def test_the_grid_filters_flagged_class_pairs_and_searches_every_image():
    from app.sections import review

    check = check_frame()
    assert review.select(check, True, None, "").sample_id.tolist() == ["a1", "b2", "c3"]
    assert review.select(check, False, None, "").sample_id.tolist() == list(check.sample_id)
    assert review.select(check, True, ("1", "7"), "").sample_id.tolist() == ["a1", "b2"]
    assert review.select(check, True, ("1", "7"), "E5").sample_id.tolist() == ["e5"]
    pairs = review.pairs(check)
    assert pairs.option.tolist() == ["labelled 1, looks like 7 (2)",
                                     "labelled 4, looks like 9 (1)"]
    assert pairs.sentence.iloc[0] == "about 2 images labelled 1 look like 7"


def test_grid_rows_and_edits_accept_reject_another_label_and_the_query():
    from app.sections import review

    check = check_frame()
    shown = review.rows(check, {"b2": "", "c3": "8"}, exclude={"a1"}, test=True)
    assert shown.decision.tolist() == ["undecided", "reject", "accept", "undecided",
                                       "undecided"]
    assert shown.label.tolist() == ["7", "7", "8", "3", "7"]
    assert shown["left out of the query"].tolist() == [True, False, False, False, False]
    assert shown.note.tolist()[:4] == ["the label may be wrong"] * 3 + [""]
    assert shown["looks like"].tolist()[:1] == ["7 (90%)"]
    assert shown["looks like"].iloc[3] == "3 (its given label, 95%)"

    edited = shown.copy()
    edited.loc[0, "decision"] = "accept"  # a1 → 7
    edited.loc[1, "decision"] = "undecided"  # b2 forgotten
    edited.loc[3, "label"] = "8"  # d4: another label accepts it
    edited.loc[4, "decision"] = "accept"  # e5: accepting its given label keeps it
    edited["left out of the query"] = [False, True, False, False, False]
    decided = review.decisions(edited, shown, {"b2": "", "c3": "8"})
    assert decided == {"a1": "7", "c3": "8", "d4": "8", "e5": ""}
    assert review.left_out(edited, shown, {"a1", "zz"}) == {"b2", "zz"}


def test_the_grid_proposes_accept_only_for_the_recommended_fixes():
    from app.sections import review
    from influence import advice

    check = check_frame()
    rec = advice.recommend(check, None, None, sure=0.75)
    assert rec.fixes == {"a1": "7", "b2": "7"} and rec.remove_flagged == {"c3": "9"}
    shown = review.rows(check, {}, rec=rec)
    assert shown.recommended.tolist() == ["accept", "accept", "remove or look", "", ""]
    assert shown.decision.tolist() == ["undecided"] * 5  # proposed, not decided
    assert "recommended" not in review.rows(check, {}).columns


def test_a_probability_just_under_the_sure_threshold_never_reads_as_the_threshold():
    from app.sections import review
    from influence import advice

    check = check_frame().assign(suggested_p=[advice.SURE - 4e-4, advice.SURE, 0.29, 0.95, 1.0])
    rec = advice.recommend(check, None, None)
    shown = review.rows(check, {}, rec=rec)
    assert shown.recommended.tolist()[:2] == ["remove or look", "accept"]
    assert shown["looks like"].tolist() == ["7 (94%)", "7 (95%)", "9 (29%)",
                                            "3 (its given label, 95%)",
                                            "7 (its given label, 100%)"]


def test_corrections_change_only_the_corrected_labels():
    from app.sections import review
    from datasets.builtin import load_digits

    data = load_digits().subset(range(30))
    position = {sid: i for i, sid in enumerate(data.ids)}
    sid = data.ids[4]
    new = str(data.classes[(data.labels[4] + 3) % 10])
    labels = review.corrected_labels(data, position, {sid: new})
    assert data.classes[labels[4]] == new
    assert (np.delete(labels, 4) == np.delete(data.labels, 4)).all()
