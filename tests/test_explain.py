"""Why this mistake? Q test images explained in one retrace (Q tangents through the same jvp) give
exactly the single-query retrace of each, and the per-test-image trust check retrains for real."""
import numpy as np
import pytest
import torch

from helpers import least_squares
from influence import explain, runs, trust
from influence.config import RunConfig, RunError
from influence.sgd import run_sgd
from influence.sgd_influence import retrace, retrace_queries


@pytest.mark.parametrize("epochs,l2", [(1, 0.0), (3, 0.01)])
def test_q_queries_in_one_retrace_equal_q_single_retraces(epochs, l2):
    n = 40
    obj, schedule, theta0, u = least_squares(n, epochs, 7, l2, "constant")
    everyone = torch.ones(n, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    gen = torch.Generator().manual_seed(5)
    us = {k: torch.randn(4, *v.shape, generator=gen, dtype=torch.float64) for k, v in u.items()}
    together = retrace_queries(obj, schedule, checkpoints, lambda k: everyone, us,
                               range(epochs)).numpy()
    assert together.shape == (4, n) and np.abs(together).max() > 1e-3
    for q in range(4):
        alone = retrace(obj, schedule, checkpoints, lambda k: everyone,
                        {k: v[q] for k, v in us.items()}, range(epochs)).numpy()
        np.testing.assert_allclose(together[q], alone, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def dnn():
    """A small non-linear network on the digits in float64, trained 2 epochs of 5 steps."""
    run = runs.Run(RunConfig(dataset="digits", model="dnn", epochs=2, batch_size=256,
                             lr=0.5, dtype="float64", seed=3))
    run.train()
    return run


@pytest.mark.parametrize("last_epoch_only", [True, False])
def test_each_row_is_the_single_query_influence_of_that_test_image(dnn, last_epoch_only):
    test_ids = [dnn.data.ids[i] for i in dnn.split.test[:3]]
    matrix = explain.retrace_test_images(dnn, test_ids, last_epoch_only, chunk=2)  # two chunks: 2 + 1 queries
    assert matrix.shape == (3, len(dnn.train_ids))
    for sid, row in zip(test_ids, matrix):
        single = dnn.influence(dnn.test_loss_fn(sid), last_epoch_only)
        np.testing.assert_allclose(row, single, rtol=0, atol=1e-10)
    assert not np.allclose(matrix[0], matrix[1])  # different images, different explanations


def test_only_test_images_can_be_explained(dnn):
    train_id, val_id = dnn.train_ids[0], dnn.data.ids[dnn.split.val[0]]
    for sid, words in ((train_id, "a training image"), (val_id, "a validation image"),
                       ("no-such-image", "not an image of this data set")):
        with pytest.raises(RunError, match=words):
            explain.retrace_test_images(dnn, [sid])
    with pytest.raises(RunError, match="1 to 1000"):
        explain.retrace_test_images(dnn, [])


def test_the_table_lists_harmful_then_helpful_images_with_their_scores(dnn):
    test_id = dnn.data.ids[dnn.split.test[0]]
    matrix = explain.test_scores(dnn, "sgd-last", [test_id])
    frame = explain.table(dnn, [test_id], matrix, top=5)
    harmful, helpful = frame[frame.side == "harmful"], frame[frame.side == "helpful"]
    assert list(harmful["rank"]) == [1, 2, 3, 4, 5] and list(helpful["rank"]) == [1, 2, 3, 4, 5]
    assert harmful.score.is_monotonic_increasing and (harmful.score < 0).all()
    assert helpful.score.is_monotonic_decreasing and (helpful.score > 0).all()
    assert harmful.score.iloc[0] == matrix[0].min() and helpful.score.iloc[0] == matrix[0].max()
    assert "drop by" in explain.in_words(-0.01) and "rise by" in explain.in_words(0.01)


def test_baselines_explain_with_the_same_query_and_suspicion_rankings_cannot(dnn):
    test_id = dnn.data.ids[dnn.split.test[0]]
    traced = explain.test_scores(dnn, "tracin", [test_id])
    assert traced.shape == (1, len(dnn.train_ids)) and np.isfinite(traced).all()
    with pytest.raises(RunError, match="cannot explain"):
        explain.test_scores(dnn, "isolation-forest", [test_id])


def test_trust_check_of_one_test_image_measures_that_image_loss(digits_logreg):
    test_id = digits_logreg.data.ids[digits_logreg.split.test[0]]
    result = trust.of_test_image(digits_logreg, "sgd", test_id, n=8, groups=5)
    assert result["n"] == 8 and result["tau"] > 0.5 and result["sign_agreement"] >= 0.75, result
    # the truth is the change of that image's loss, not of the validation loss
    removed = [result["rows"].sample_id[0]]
    child = digits_logreg.retrain(removed, "all")
    loss = digits_logreg.test_loss_fn(test_id)
    change = float(loss(child.theta) - loss(digits_logreg.theta))
    assert result["rows"].actual[0] == pytest.approx(change, rel=1e-6, abs=1e-12)
