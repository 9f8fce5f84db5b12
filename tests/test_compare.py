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


def test_holm_and_the_verdict_call_better_only_what_survives_correction():
    before, after = paired(380, 2, 12, 6)
    strong = compare.cleaning_verdict(before, after, [0.06] * 19)
    assert strong["p_random"] == pytest.approx(0.05)
    assert strong["p_random_holm"] == pytest.approx(0.05)  # max(2·min, the other) in Holm
    assert strong["p_mcnemar_holm"] == pytest.approx(min(1, 2 * strong["p_mcnemar"]))
    assert not strong["better_than_chance"]  # 0.05 is not below 0.05
    assert strong["better_than_controls"] == 19
    clear = compare.cleaning_verdict(before, after, [0.06] * 99)
    assert clear["better_than_chance"] and clear["significant_vs_before"]
    assert "**better than chance**" in " ".join(words.verdict(clear))


def test_a_one_image_difference_on_400_is_not_called_better():
    """The case a user met: 19.00 % → 19.50 %, random 19.75 %: one test image."""
    before, after = paired(322, 3, 2, 73)
    v = compare.cleaning_verdict(before, after, [0.1975] * 20)
    said = " ".join(words.verdict(v))
    assert not v["significant_vs_before"] and "could well be chance" in said
    assert "better than chance**" not in said and "not enough to call it" in said


def test_bad_inputs_get_plain_sentences():
    tiny = compare.cleaning_verdict(*paired(7, 1, 2, 0), [0.2] * 5)  # 10 test images
    said = " ".join(words.verdict(tiny))
    assert "With 10 test images this change could well be chance" in said
    assert "test images to show" in said  # and roughly how many would be needed
    none = " ".join(words.verdict(compare.cleaning_verdict(*paired(7, 1, 2, 0), [])))
    assert "No random removals were run" in none  # R = 0
    empty = compare.cleaning_verdict(np.zeros(0, bool), np.zeros(0, bool), [0.1])
    assert words.verdict(empty) == ["There are no test images, so nothing can be said about "
                                    "the test error."]


def test_images_needed_grows_as_the_effect_shrinks():
    big = compare.images_needed(fixed=12, broken=2, n=400)
    small = compare.images_needed(fixed=8, broken=6, n=400)
    assert big < 400 < small
    assert compare.images_needed(3, 3, 400) is None and compare.images_needed(0, 0, 400) is None
