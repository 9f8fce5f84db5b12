"""The default number of random controls is what the prediction-interval test needs, and the
threshold the page states is the one the test applies."""
import numpy as np

from influence import cleaning, compare


def test_the_stated_threshold_is_the_tests_own():
    r = cleaning.CONTROLS
    assert 2 <= r < compare.controls_needed()  # fewer than counting alone would need
    threshold = cleaning.interval_threshold()
    assert 2.0 < threshold < 2.5  # the page rounds it to one decimal
    controls = np.array([0.20, 0.21, 0.22, 0.23, 0.24])[:r]
    mean, sd = controls.mean(), controls.std(ddof=1)
    assert compare.interval_p(mean - 1.01 * threshold * sd, controls) < compare.ALPHA
    assert compare.interval_p(mean - 0.99 * threshold * sd, controls) > compare.ALPHA
    assert cleaning.interval_threshold(20) < threshold  # more controls, a lower bar
    assert np.isnan(cleaning.interval_threshold(1))
