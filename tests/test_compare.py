"""The statistics every comparison uses (influence.compare) and how the app words them."""
import numpy as np
import pytest
from scipy.stats import binomtest

from app import words
from influence import compare


def paired(both_right: int, broken: int, fixed: int, both_wrong: int):
    before = np.array([1] * both_right + [1] * broken + [0] * fixed + [0] * both_wrong, bool)
    after = np.array([1] * both_right + [0] * broken + [1] * fixed + [0] * both_wrong, bool)
    return before, after


def test_mcnemar_on_a_known_table():
    """Only the changed images count: 2 broken, 12 fixed → the exact two-sided binomial test on
    the 14 discordant pairs, p = 2·P(X ≤ 2 | n = 14, ½) = 0.01294."""
    result = compare.mcnemar(*paired(380, 2, 12, 6))
    assert (result["n"], result["broken"], result["fixed"]) == (400, 2, 12)
    assert result["p"] == pytest.approx(binomtest(2, 14, 0.5).pvalue)
    assert result["p"] == pytest.approx(0.012939, abs=1e-6)
    assert compare.mcnemar(*paired(10, 0, 0, 5))["p"] == 1.0  # nothing changed


def test_the_empirical_p_value_of_random_controls():
    """(1 + #{random ≤ cleaned}) / (R + 1)."""
    assert compare.empirical_p(0.10, [0.12] * 19) == pytest.approx(1 / 20)
    assert compare.empirical_p(0.10, [0.12] * 10 + [0.10] * 5 + [0.09] * 4) == \
        pytest.approx(10 / 20)
    assert np.isnan(compare.empirical_p(0.10, []))


def test_better_needs_both_claims_an_intersection_union_test_without_holm():
    """12 fixed, 2 broken of 400 (4.5 % → 2 %): McNemar p = 0.0129 < 0.05. Against random
    rounds the prediction-interval p decides. "Better" = both claims, each at 0.05, and its p
    is the larger of the two (no Holm)."""
    before, after = paired(380, 2, 12, 6)
    controls = [0.025, 0.03, 0.035] * 7  # R = 21, mean 3 %
    v = compare.cleaning_verdict(before, after, controls)
    assert v["p_before"] == pytest.approx(v["p_mcnemar"])  # one round: no correction, no Holm
    assert v["p_vs_random"] == pytest.approx(compare.interval_p(0.02, controls))
    assert 0.01 < v["p_vs_random"] < 0.05
    assert v["random_test"] == compare.INTERVAL
    assert v["better_than_before"] and v["better_than_random"] and v["better"]
    assert v["p_better"] == pytest.approx(max(v["p_mcnemar"], v["p_vs_random"]))
    assert v["sentence"].startswith("This round made the model better")
    # one claim alone is not "better", and the other claim keeps its own result
    close = compare.cleaning_verdict(before, after, [0.015, 0.02, 0.025] * 7)
    assert close["better_than_before"] and not close["better_than_random"]
    assert not close["better"] and close["p_better"] == pytest.approx(close["p_vs_random"])
    assert "better" not in close["sentence"].replace("Not shown to be better", "")
    weak_before, weak_after = paired(380, 5, 9, 6)  # 2.75 % after, McNemar p = 0.42
    lucky = compare.cleaning_verdict(weak_before, weak_after, [0.035, 0.04, 0.045] * 7)
    assert lucky["better_than_random"] and not lucky["better_than_before"]
    assert not lucky["better"] and lucky["sentence"].startswith("Not shown to be better")
    assert lucky["p_better"] == pytest.approx(lucky["p_mcnemar"])


def test_the_empirical_p_of_20_controls_can_pass_one_round_but_not_two():
    """The smallest empirical p of R controls is 1 / (R + 1): 1/21 = 0.048 < 0.05 with R = 20;
    over 2 rounds (α/2 = 0.025) it needs 40."""
    assert compare.smallest_empirical_p(20) == pytest.approx(1 / 21) and 1 / 21 < 0.05
    assert compare.smallest_empirical_p(19) == pytest.approx(0.05)  # not below 0.05
    assert compare.controls_needed(0.05) == 20
    assert compare.controls_needed(0.025) == 40 and compare.controls_needed(0.01) == 100
    before, after = paired(380, 2, 12, 6)
    same = [0.06] * 20  # all worse, no spread: the verdict falls back to the empirical p
    v = compare.cleaning_verdict(before, after, same)
    assert np.isnan(v["p_random_interval"]) and v["random_test"] == compare.EMPIRICAL
    assert v["p_vs_random"] == pytest.approx(1 / 21) and v["better"]
    twice = compare.verdict_for_rounds(v, 2)
    assert twice["p_vs_random"] == pytest.approx(2 / 21) and not twice["better_than_random"]
    assert twice["controls_needed"] == 40
    assert "it would need 40 to go below 0.025" in " ".join(twice["details"])
    assert "it would need" not in " ".join(v["details"])  # 20 are enough for one round


def test_the_prediction_interval_p_on_a_hand_computed_sample():
    """Controls 20, 22, 24, 26, 28 %: mean 24 %, s = √0.001; cleaned 15 %:
    t = 0.09 / (s·√(1 + 1/5)) = 0.09 / √0.0012 = (3/2)√3, and with 4 degrees of freedom
    P(T ≥ t) = 1/2 − (3/8)·u·(1 − t²/(12(1 + t²/4))), u = t/√(1 + t²/4): 0.030085."""
    controls = [0.20, 0.22, 0.24, 0.26, 0.28]
    t = 1.5 * np.sqrt(3)
    closed_form = 0.5 - 3 / 8 * t / np.sqrt(1 + t * t / 4) * (1 - t * t / (12 * (1 + t * t / 4)))
    assert compare.interval_p(0.15, controls) == pytest.approx(closed_form, rel=1e-9)
    assert compare.interval_p(0.15, controls) == pytest.approx(0.030085, abs=1e-6)
    assert compare.interval_p(0.24, controls) == pytest.approx(0.5)  # at the mean
    assert compare.interval_p(0.30, controls) > 0.5  # worse than the controls
    assert np.isnan(compare.interval_p(0.15, [0.2])) and np.isnan(compare.interval_p(0.1, []))
    assert compare.random_p(0.15, controls) == (pytest.approx(0.030085, abs=1e-6),
                                                compare.INTERVAL)
    assert compare.random_p(0.15, []) == (pytest.approx(np.nan, nan_ok=True), None)


def test_every_p_is_corrected_for_the_rounds_compared_on_the_same_test_images():
    before, after = paired(380, 2, 12, 6)  # McNemar p = 0.0129
    controls = [0.025, 0.03, 0.035] * 7
    one = compare.cleaning_verdict(before, after, controls, rounds=1)
    five = compare.cleaning_verdict(before, after, controls, rounds=5)
    assert five["p_before"] == pytest.approx(5 * one["p_mcnemar"])
    assert five["p_vs_random"] == pytest.approx(min(1, 5 * one["p_vs_random"]))
    assert one["better"] and not five["better_than_before"] and not five["better"]
    assert five["alpha_round"] == pytest.approx(0.01)
    assert "multiplied by 5 (Bonferroni)" in " ".join(five["details"])
    assert compare.verdict_for_rounds(one, 5) == five  # a kept verdict, restated
    assert compare.for_rounds(0.3, 4) == 1.0 and compare.for_rounds(0.01, 3) == \
        pytest.approx(0.03)
    with pytest.raises(ValueError):
        compare.for_rounds(0.01, 0)
    # a verdict kept before these keys existed gets them from its own figures
    old = {k: one[k] for k in ("n_test", "test_error_before", "test_error_after", "fixed",
                               "broken", "p_mcnemar", "control_errors")}
    assert compare.verdict_for_rounds(old, 5)["p_vs_random"] == pytest.approx(
        five["p_vs_random"])
    assert set(five) == set(compare.VERDICT_KEYS)


def test_a_round_with_fixes_is_compared_with_removing_them_instead():
    before, after = paired(380, 2, 12, 6)
    instead = after.copy()
    instead[:10] = False  # removing them instead breaks 10 images fixing kept right
    v = compare.cleaning_verdict(before, after, [0.06] * 20, right_removed_instead=instead,
                                 removed=0, relabelled=5)
    assert v["remove_instead_fixed"] == 10 and v["remove_instead_broken"] == 0
    assert v["remove_instead_error"] == pytest.approx(1 - instead.mean())
    assert v["fixing_beats_removing"] and v["p_fix_vs_remove"] == pytest.approx(
        binomtest(0, 10, 0.5).pvalue)
    said = " ".join(v["details"])
    assert "Removing the fixed images instead of fixing them" in said
    assert "fixing 5 random images the label check flags" in said
    plain = compare.cleaning_verdict(before, after, [0.06] * 20)
    assert plain["fixing_beats_removing"] is None and plain["p_fix_vs_remove"] is None


def test_a_one_image_difference_on_400_is_not_called_better():
    """The case a user met: 18.75 % → 19.00 %, random 19.75 %: one test image worse. Doing
    better than random rounds alone is not "better"."""
    before, after = paired(322, 3, 2, 73)
    v = compare.cleaning_verdict(before, after, [0.1975] * 20)
    assert not v["better_than_before"] and not v["better"]
    assert v["sentence"] == "This round did not help: the test error rose from 18.75% to 19.00%."
    said = " ".join(words.verdict(v))  # as page 4 says it: the headline, then the tests
    assert said.startswith(f"**{v['sentence']}**") and "McNemar" in said
    assert "no p-value is corrected for [rounds](glossary?term=rounds)" in said


def test_bad_inputs_get_plain_sentences():
    tiny = compare.cleaning_verdict(*paired(7, 1, 2, 0), [0.2, 0.3] * 3)  # 10 test images
    assert "which 10 test images cannot tell apart from chance" in tiny["sentence"]
    said = " ".join(tiny["details"])
    assert "test images to show at 0.05 with 80% power (Connor 1987)" in said
    assert f"{tiny['test_images_needed']:,} test images" in said
    none = compare.cleaning_verdict(*paired(7, 1, 2, 0), [])
    assert "no random rounds were run" in none["sentence"]  # R = 0
    assert none["random_test"] is None and not none["better_than_random"]
    assert np.isnan(none["p_vs_random"]) and np.isnan(none["p_better"])
    empty = compare.cleaning_verdict(np.zeros(0, bool), np.zeros(0, bool), [0.1])
    assert empty["sentence"] == ("There are no test images, so nothing can be said about this "
                                 "round.") and empty["details"] == [] and not empty["better"]


def test_images_needed_follows_connor_1987_on_a_published_example():
    """Connor (1987)'s formula as the calculators citing it work it: discordant proportions
    0.45 and 0.05, α = 0.05 two-sided, power 0.8: n = 22.01, so 23 pairs."""
    assert compare.images_needed(fixed=45, broken=5, n=100) == 23
    assert compare.images_needed(fixed=5, broken=45, n=100) == 23  # either direction
    assert compare.images_needed(12, 2, 400, alpha=0.01) > compare.images_needed(12, 2, 400)
    assert compare.images_needed(12, 2, 400) < compare.images_needed(8, 6, 400)
    assert compare.images_needed(3, 3, 400) is None and compare.images_needed(0, 0, 400) is None
    assert compare.images_needed(1, 0, 0) is None


def test_images_needed_gives_the_power_asked_for_in_a_simulation():
    """At the n of the formula, McNemar's test (the asymptotic one the formula is for) on
    simulated pairs with discordant proportions 0.03 and 0.06 rejects in about 80 % of 20,000
    seeded draws (0.81 measured; the standard error is 0.003)."""
    from scipy.stats import norm
    n = compare.images_needed(fixed=60, broken=30, n=1000)
    rng = np.random.default_rng(0)
    b, c, _ = rng.multinomial(n, [0.03, 0.06, 0.91], size=20_000).T
    z = np.abs(c - b) / np.sqrt(np.maximum(b + c, 1))
    power = np.mean(z > norm.ppf(1 - 0.05 / 2))
    assert power == pytest.approx(0.8, abs=0.03)
    smaller = rng.multinomial(n // 2, [0.03, 0.06, 0.91], size=20_000).T
    assert np.mean(np.abs(smaller[1] - smaller[0]) / np.sqrt(np.maximum(
        smaller[0] + smaller[1], 1)) > norm.ppf(0.975)) < 0.7  # half as many: clearly less
