"""What the app recommends: the trust verdict, the gating of removal, the confused class pairs,
and what the training log says (influence.advice), on frames with known answers; and the trust
check's top sets on a real run."""
import math

import numpy as np
import pandas as pd
import pytest

from influence import advice, methods, runs, trust
from influence.config import RunConfig, RunError


def checked(rho=0.8, p=0.001, tops=((10, -0.02, -0.015), (50, -0.05, -0.04)), loss=0.8):
    """A trust check's figures as influence.trust gives them (p two-sided)."""
    return {"group_spearman": rho, "group_p_value": p, "query_loss": loss,
            "top_rows": pd.DataFrame(list(tops), columns=["size", "estimate", "actual"])}


# --- the verdict -------------------------------------------------------------------------------
def test_a_significant_correlation_with_top_sets_within_the_factor_passes_in_green():
    v = advice.trust_verdict(checked())
    assert v.level == "pass" and v.passes and v.colour == "green"
    assert v.icon == ":material/verified:"
    assert v.group_p == pytest.approx(0.0005)  # one-sided from the two-sided p
    assert v.top_ratio == pytest.approx(0.02 / 0.015) and v.top_size == 10  # the set off most
    assert v.shown_estimate == pytest.approx(-0.02)


def test_a_correlation_that_is_not_significant_fails_in_red_whatever_the_top_sets():
    for rho, p in ((0.24, 0.31), (-0.9, 0.0001), (float("nan"), float("nan"))):
        v = advice.trust_verdict(checked(rho, p))
        assert v.level == "fail" and v.colour == "red" and v.icon == ":material/error:", (rho, p)
    # the case: 0.24 over 20 groups is not significant
    assert advice.trust_verdict({**checked(0.24, 0.31), "group_p_greater": 0.155}).level == "fail"


def test_a_top_set_of_the_wrong_sign_fails():
    v = advice.trust_verdict(checked(tops=((10, -0.02, -0.015), (50, -0.05, 0.014))))
    assert v.level == "fail" and v.colour == "red"
    assert "retraining without them raised it" in v.sentence
    assert v.top_ratio < 0


def test_a_magnitude_off_by_more_than_the_factor_is_unsure_in_orange():
    v = advice.trust_verdict(checked(tops=((10, -0.08, -0.015),)))  # 5.3× too large
    assert v.level == "unsure" and v.colour == "orange" and v.icon == ":material/help:"
    assert v.top_ratio == pytest.approx(0.08 / 0.015)
    assert advice.trust_verdict(checked(tops=((10, -0.08, -0.015),)), factor=6).level == "pass"
    assert advice.trust_verdict(checked(tops=((10, -0.004, -0.015),))).level == "unsure"  # small
    no_tops = checked()
    del no_tops["top_rows"]
    assert advice.trust_verdict(no_tops).level == "unsure"


def test_an_impossible_estimate_is_never_shown_as_a_number():
    # the case: an estimated drop of 2.28 of a validation loss of 0.81
    v = advice.trust_verdict(checked(tops=((100, -2.28, -1.5),), loss=0.81))
    assert v.shown_estimate is None and v.level == "unsure"
    assert "2.28" not in v.sentence and "impossible" in v.sentence
    assert advice.trust_verdict(checked(tops=((100, -2.28, -1.5),)), loss=5.0).level == "pass"
    assert advice.possible_estimate(-2.28, 0.81) is None
    assert advice.possible_estimate(-0.5, 0.81) == -0.5 and advice.possible_estimate(3.0, 0.81) == 3
    assert advice.possible_estimate(float("nan"), 1.0) is None


def test_without_a_check_the_verdict_is_grey():
    for figures in (None, {}, {"tau": 0.3, "n": 10}):
        v = advice.trust_verdict(figures)
        assert v.level == "none" and v.colour == "grey" and v.icon == ":material/info:"


def test_kept_figures_give_the_same_verdict():
    result = {**checked(), "group_p_greater": 0.0005, "method": "sgd", "n": 0,
              "tau": float("nan")}
    kept = trust.figures(result)
    assert kept["tau"] is None and isinstance(kept["top_rows"], list)
    assert advice.trust_verdict(kept) == advice.trust_verdict(result)


# --- the recommendation ------------------------------------------------------------------------
def label_check():
    return pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"],
                         "label": ["1", "1", "7", "4", "9"],
                         "flagged": [True, False, True, True, False],
                         "suggested_label": ["7", "1", "1", "4", "4"],
                         "suggested_p": [0.999, 0.9, 0.51, 0.95, 0.7],
                         "influence": [-0.9, -0.1, -0.8, -0.5, -0.6]})


def ranking():
    return pd.DataFrame({"sample_id": ["e", "a", "b", "c", "d"],
                         "influence": [-0.5, -0.3, -0.1, 0.1, 0.2]})


PASSING_CURVE = {"helps": True, "k": 2}


def test_fixes_are_the_flagged_images_the_check_is_sure_of_the_others_to_remove_or_look_at():
    assert 0.51 < advice.SURE <= 0.999
    rec = advice.recommend(label_check(), None, None)
    assert rec.fixes == {"a": "7"}  # d is flagged but keeps its label; b, e unflagged
    assert rec.remove_flagged == {"c": "1"}  # flagged, its suggested label only 51 % likely
    assert rec.remove == [] and rec.how_many is None
    assert any(r.startswith("1 flagged image is fixed to the label the check suggests: the "
                            "check is sure") and "1 more looks wrong but the check is unsure "
               "of the right label: remove it or look at each." in r for r in rec.reasons)
    assert advice.recommend(None, None, None).fixes == {}
    everything = advice.recommend(label_check(), None, None, sure=0.5)
    assert everything.fixes == {"a": "7", "c": "1"} and everything.remove_flagged == {}
    nothing = advice.recommend(label_check().drop(columns="suggested_p"), None, None)
    assert nothing.fixes == {} and nothing.remove_flagged == {"a": "7", "c": "1"}
    assert any(r.startswith("No flagged image is fixed by default") for r in nothing.reasons)


def test_a_failing_trust_check_gets_no_removal_recommendation():
    failing = checked(0.24, 0.31)
    rec = advice.recommend(label_check(), ranking(), failing, PASSING_CURVE)
    assert rec.remove == [] and rec.trust.level == "fail"
    assert rec.how_many == 2  # the curve passes, but the ranking is not trusted
    assert any(r.startswith("No removal is recommended. Do not remove images by this ranking")
               for r in rec.reasons)
    unchecked = advice.recommend(label_check(), ranking(), failing, None)
    assert not any("has not been checked" in r for r in unchecked.reasons)  # moot: not trusted
    unsure = checked(tops=((10, -0.08, -0.015),))
    assert advice.recommend(label_check(), ranking(), unsure, PASSING_CURVE).remove == []
    assert advice.recommend(label_check(), ranking(), None, PASSING_CURVE).remove == []


def test_a_passing_trust_check_and_curve_remove_the_top_k_less_the_fixed_ones():
    rec = advice.recommend(label_check(), ranking(), checked(), PASSING_CURVE)
    assert rec.how_many == 2 and rec.remove == ["e"]  # a, second, is fixed instead
    assert rec.fixes == {"a": "7"} and rec.remove_flagged == {"c": "1"}
    assert any("1 of them are fixed instead" in r for r in rec.reasons)
    held = advice.recommend(label_check(), ranking(), checked(),
                            {**PASSING_CURVE, "flagged_in_set": 1, "random_flagged": 0.6})
    assert any("1 of these 2 are also flagged by the label check (0.6 in a random set" in r
               for r in held.reasons)


def test_how_many_needs_the_curve_to_beat_random_sets():
    for curve, why in ((None, "How many to remove has not been checked"),
                       ({"helps": False, "k": 0, "candidate": 20}, "Remove no images by count")):
        rec = advice.recommend(label_check(), ranking(), checked(), curve)
        assert rec.how_many is None and rec.remove == []
        assert any(r.startswith(why) for r in rec.reasons)


def test_sgd_influences_best_other_label_is_never_the_default():
    check = label_check().assign(best_label=["9", "9", "9", "9", "9"])
    rec = advice.recommend(check, ranking(), checked(), PASSING_CURVE)
    assert {**rec.fixes, **rec.remove_flagged} == {"a": "7", "c": "1"}


# --- confused pairs ----------------------------------------------------------------------------
def test_confused_pairs_count_the_flagged_images_per_given_and_suggested_label():
    check = pd.DataFrame({"sample_id": list("abcdefg"),
                          "given label": ["1", "1", "1", "4", "4", "7", "3"],
                          "flagged": [True, True, True, True, False, True, True],
                          "suggested_label": ["7", "7", "7", "9", "9", "1", "3"]})
    pairs = advice.confused_pairs(check)
    assert list(pairs.columns) == ["given", "looks_like", "count", "sentence"]
    assert pairs[["given", "looks_like", "count"]].values.tolist() == [
        ["1", "7", 3], ["4", "9", 1], ["7", "1", 1]]
    assert pairs.sentence[0] == "about 3 images labelled 1 look like 7"
    assert pairs.sentence[1] == "1 image labelled 4 looks like 9"
    assert advice.confused_pairs(check.iloc[:0]).empty


# --- the training log --------------------------------------------------------------------------
def training_log(val_losses, accuracies=None):
    """Two steps per epoch, validation figures on each epoch's last row (TrainingLog)."""
    rows = []
    for e, v in enumerate(val_losses, 1):
        acc = accuracies[e - 1] if accuracies else 0.8
        rows += [{"step": 2 * e - 1, "epoch": e, "loss": 1.0, "accuracy": 0.5},
                 {"step": 2 * e, "epoch": e, "loss": 0.9, "accuracy": 0.6, "val_loss": v,
                  "val_accuracy": acc}]
    return pd.DataFrame(rows, columns=["step", "epoch", "loss", "accuracy", "val_loss",
                                       "val_accuracy"])


def test_overfitting_reports_the_best_epoch_once_validation_loss_rose_for_long_enough():
    log = training_log([1.0, 0.7, 0.5, 0.55, 0.6, 0.62, 0.65])
    found = advice.overfitting(log)
    assert found["best_epoch"] == 3 and found["epochs_since_best"] == 4
    assert found["final_val_loss"] == pytest.approx(0.65)
    assert "epoch 3" in found["sentence"] and "3 epochs" in found["sentence"]
    assert advice.overfitting(log, patience=5) is None
    assert advice.overfitting(training_log([1.0, 0.7, 0.5, 0.55, 0.6])) is None  # 2 epochs
    assert advice.overfitting(training_log([1.0, 0.8, 0.6, 0.5])) is None  # still falling
    assert advice.overfitting(training_log([1.0])) is None


def test_did_it_learn_compares_validation_accuracy_with_chance():
    learned = advice.learned(training_log([1.0, 0.8], [0.5, 0.76]), [str(c) for c in range(10)])
    assert learned.startswith("The model learned") and "76%" in learned and "10%" in learned
    guessing = advice.learned(training_log([1.0, 1.0], [0.5, 0.55]), ["a", "b"])
    assert guessing.startswith("The model did not clearly learn") and "50%" in guessing
    assert advice.learned(training_log([1.0], [0.56]), 2, n_val=1000).startswith(
        "The model learned")  # 560 of 1000 against 50 %: binomial p < 0.05
    assert advice.learned(training_log([1.0], [0.56]), 2, n_val=20).startswith(
        "The model did not")
    no_val = training_log([float("nan")]).drop(columns=["val_loss"])
    assert "no validation images" in advice.learned(no_val, 10)


# --- the trust check's top sets on a real run --------------------------------------------------
@pytest.fixture(scope="module")
def logreg():
    run = runs.Run(RunConfig(dataset="digits", model="logreg", epochs=2, lr=0.5,
                             dtype="float64"))
    run.train()
    return run


def test_the_trust_check_retrains_the_top_sets_and_a_flipped_ranking_gets_no_removal(logreg):
    ranked = methods.rank(logreg, "sgd")
    result = trust.retraining_agreement(logreg, ranked, "all", groups=trust.GROUPS)
    sizes = trust.top_sizes(len(ranked))
    assert list(result["top_rows"]["size"]) == sizes == [11, 54]
    assert result["top_rows"].estimate[0] == pytest.approx(ranked.influence.iloc[:11].sum())
    assert result["n"] == 0 and math.isnan(result["tau"]) and len(result["rows"]) == 0
    assert result["group_spearman"] > 0.8 and result["group_p_greater"] < 0.05
    assert result["query_loss"] > 0
    # the top set's retrained change agrees with the removal of those images alone
    alone = trust.retraining_agreement(logreg, ranked, "all", groups=0, tops=(0.01,))
    assert alone["top_rows"].actual[0] == pytest.approx(result["top_rows"].actual[0], abs=1e-9)
    flipped = trust.retraining_agreement(logreg, ranked.assign(influence=-ranked.influence),
                                         "all")
    verdict = advice.trust_verdict(flipped)
    assert verdict.level == "fail" and verdict.colour == "red"
    assert advice.recommend(None, ranked, flipped, PASSING_CURVE).remove == []


def test_single_images_only_on_request_and_never_one(logreg):
    ranked = methods.rank(logreg, "sgd")
    result = trust.retraining_agreement(logreg, ranked, "all", n=4, groups=0, tops=())
    assert result["n"] == 4 and -1 <= result["tau"] <= 1 and len(result["top_rows"]) == 0
    with pytest.raises(RunError):
        trust.retraining_agreement(logreg, ranked, "all", n=1)
    with pytest.raises(RunError):
        trust.retraining_agreement(logreg, ranked, "all", tops=(0.9,))
    assert np.isfinite(result["query_loss"])
