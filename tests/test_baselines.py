"""Baselines keep SGD-influence's sign convention (negative = harmful / suspicious) and agree
with brute force where brute force is defined."""
import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from datasets.builtin import load_digits
from influence import baselines, methods, models, runs
from influence.config import RunConfig, RunError
from influence.sgd import (Objective, SGDConfig, counterfactual_sgd, initial_params,
                           make_schedule, per_sample_loss, run_sgd)
from influence.progress import Cancelled
from influence.sgd_influence import loss_gradient

N = 200


@pytest.fixture(scope="module")
def digits_1_vs_7():
    """200 training and 161 validation images of 1s and 7s, standardised, float64."""
    data = load_digits()
    pick = np.random.default_rng(0).permutation(np.flatnonzero(np.isin(data.labels, [1, 7])))
    flat = data.images[pick].reshape(len(pick), -1).astype(np.float64)
    x = torch.as_tensor(StandardScaler().fit(flat[:N]).transform(flat))
    y = torch.as_tensor((data.labels[pick] == 7).astype(np.int64))
    return x[:N], y[:N], x[N:], y[N:]


def leave_one_out_truth(obj, schedule, theta0, val_loss):
    """Actual change of the validation loss when each j is skipped (Definition 2)."""
    thetas = counterfactual_sgd(obj, schedule, theta0, torch.cat(
        [torch.ones(1, N, dtype=torch.bool), ~torch.eye(N, dtype=torch.bool)]))
    losses = np.array([float(val_loss({k: v[m] for k, v in thetas.items()}))
                       for m in range(N + 1)])
    return losses[1:] - losses[0], {k: v[0] for k, v in thetas.items()}


def test_koh_liang_matches_leave_one_out_on_strongly_convex_logreg(digits_1_vs_7):
    """Full-batch gradient descent to the optimum of L2-regularised logistic regression: here
    the influence function is the right first-order answer, sign and size (up to the leverage
    of each instance, which a first-order estimate leaves out: seen slope 0.91)."""
    x, y, xv, yv = digits_1_vs_7
    model = models.build("logreg", (64, 1, 1), 2, seed=0).double()
    obj = Objective(model, x, y, l2=1.0)
    schedule = make_schedule(N, SGDConfig(epochs=300, batch_size=N, lr=0.5, l2=1.0))
    theta0 = initial_params(model, "cpu", torch.float64)

    def val_loss(th):
        return per_sample_loss(obj.outputs(th, xv), yv).mean()

    truth, theta = leave_one_out_truth(obj, schedule, theta0, val_loss)
    u = loss_gradient(val_loss, theta)
    everyone = torch.ones(N, dtype=torch.bool)
    estimate = baselines.influence_function(obj, theta, u, everyone, damping=0.0)
    assert kendalltau(estimate, truth).statistic > 0.9
    assert np.corrcoef(estimate, truth)[0, 1] > 0.97  # same sign …
    slope = np.polyfit(truth, estimate, 1)[0]
    assert 0.8 < slope < 1.05, slope  # … and the same scale


def test_iterative_solve_agrees_with_dense(digits_1_vs_7, monkeypatch):
    x, y, xv, yv = digits_1_vs_7
    model = models.build("dnn", (64, 1, 1), 2, seed=0).double()
    obj = Objective(model, x, y, l2=0.01)
    theta = initial_params(model, "cpu", torch.float64)
    u = loss_gradient(lambda th: per_sample_loss(obj.outputs(th, xv), yv).mean(), theta)
    everyone = torch.ones(N, dtype=torch.bool)
    dense = baselines.influence_function(obj, theta, u, everyone, damping=0.5)
    monkeypatch.setattr(baselines, "EXACT_MAX_PARAMS", 0)
    iterative = baselines.influence_function(obj, theta, u, everyone, damping=0.5,
                                             cg_iters=500)
    np.testing.assert_allclose(iterative, dense, rtol=1e-2, atol=1e-7)


def test_tracin_has_the_sign_of_the_true_effect(digits_1_vs_7):
    """Short SGD run (the paper's LogReg settings): TracIn ranks like the truth."""
    x, y, xv, yv = digits_1_vs_7
    model = models.build("logreg", (64, 1, 1), 2, seed=0).double()
    obj = Objective(model, x, y, l2=0.01)
    schedule = make_schedule(N, SGDConfig(epochs=3, batch_size=5, lr=0.1,
                                          lr_decay="inv_sqrt", l2=0.01))
    theta0 = initial_params(model, "cpu", torch.float64)

    def val_loss(th):
        return per_sample_loss(obj.outputs(th, xv), yv).mean()

    truth, _ = leave_one_out_truth(obj, schedule, theta0, val_loss)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: torch.ones(N, dtype=torch.bool))
    estimate = baselines.tracin_scores(obj, schedule, checkpoints, val_loss)
    assert kendalltau(estimate, truth).statistic > 0.5


@pytest.fixture(scope="module")
def planted():
    """Digits with one white square image planted in training and 10% of labels flipped;
    a logistic regression trained for 2 epochs."""
    data = load_digits()
    images = data.images.copy()
    images[0] = 255
    labels = data.labels.copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(np.arange(1, len(labels)), len(labels) // 10, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    data = type(data)(images, labels, data.classes, data.ids, "planted")
    run = runs.Run(RunConfig(dataset="planted", model="logreg", epochs=2, seed=0,
                             device="cpu"), data)
    run.train()
    is_flipped = np.isin(run.split.train, flipped)
    return run, is_flipped


def position_of_white(run):
    return run.train_ids.index("digits-0000") if "digits-0000" in run.train_ids else None


@pytest.mark.parametrize("method", ["isolation-forest", "autoencoder"])
def test_outlier_detectors_put_a_planted_outlier_first(planted, method):
    run, _ = planted
    j = position_of_white(run)
    if j is None:
        pytest.skip("the planted image fell outside the training part")
    scores = methods.position_scores(run, method)
    assert len(scores) == len(run.train_ids)
    assert np.argsort(scores)[0] == j  # lowest = most suspicious


def test_raw_pixel_confident_learning_finds_flipped_labels(planted):
    run, is_flipped = planted
    scores = baselines.confident_learning_pixels(run)
    assert roc_auc_score(is_flipped, -scores) > 0.9
    assert scores.max() <= 0 and scores.min() >= -1


def test_random_is_seeded(planted):
    run, _ = planted
    np.testing.assert_array_equal(baselines.random(run, seed=3), baselines.random(run, seed=3))
    assert not np.array_equal(baselines.random(run, seed=3), baselines.random(run, seed=4))


def test_score_table_ranks_the_suspicious_first_and_skips_removed(planted):
    run, _ = planted
    child = run.retrain(run.train_ids[:5], "last")
    table = methods.rank(child, "tracin")
    assert list(table.columns) == ["sample_id", "label", "influence"]
    assert table.influence.is_monotonic_increasing
    assert not set(run.train_ids[:5]) & set(table.sample_id)
    with pytest.raises(RunError, match="unknown ranking 'nope'"):
        methods.position_scores(run, "nope")


@pytest.mark.parametrize("method", sorted(methods.REGISTRY))
def test_every_ranking_reports_progress_to_the_end(planted, method):
    run, _ = planted
    reports = []
    options = {"cg_iters": 5, "hessian_samples": 100} if method == "kl" else {}
    methods.position_scores(run, method, on_progress=reports.append, **options)
    assert reports and reports[-1].done == reports[-1].total
    assert [p.done for p in reports] == sorted(p.done for p in reports)


def test_the_iterative_solve_reports_each_iteration_and_can_be_stopped(planted, monkeypatch):
    """The app cancels a job by raising from the progress callback: it must reach the caller
    even from inside scipy's MINRES."""
    run, _ = planted
    monkeypatch.setattr(baselines, "EXACT_MAX_PARAMS", 0)  # MINRES even for this small model
    reports = []
    baselines.koh_liang(run, cg_iters=5, hessian_samples=100, on_progress=reports.append)
    assert [p.done for p in reports[:-1]] == list(range(1, len(reports)))
    assert len(reports) > 2 and all(p.total == 5 for p in reports[:-1])

    def stop(p):
        raise Cancelled()

    with pytest.raises(Cancelled):
        baselines.koh_liang(run, cg_iters=5, hessian_samples=100, on_progress=stop)
