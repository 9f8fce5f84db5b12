"""The forward, first-order-exact estimate (forward_influence) keeps the term Algorithm 2 drops,
H_j[t]·δ_j when instance j returns in a later epoch. For a quadratic loss the linearisation is
the counterfactual itself, so after several epochs every estimate equals the true
⟨u, θ_{−j}[T] − θ[T]⟩ from brute-force counterfactual SGD, where Algorithm 2 does not."""
import numpy as np
import pytest
import torch
from helpers import least_squares as least_squares_setup, squared_loss

from influence.sgd import counterfactual_sgd, run_sgd
from influence.sgd_influence import (forward_influence, forward_loss_change, loss_gradient,
                                     refine_extremes, retrace)

N, EPOCHS = 40, 3


def least_squares(l2: float, batch_size: int, lr_decay: str = "inv_sqrt"):
    """N instances trained EPOCHS epochs: an instance returns in every later epoch."""
    return least_squares_setup(N, EPOCHS, batch_size, l2, lr_decay)


def true_influence(obj, schedule, theta0, keep, u) -> np.ndarray:
    """⟨u, θ_{−j}[T] − θ[T]⟩ for every j by brute force: counterfactual SGD (Definition 2) with
    the training mask `keep` less j, all j at once; row 0 is the plain run."""
    keeps = torch.cat([keep[None], keep & ~torch.eye(N, dtype=torch.bool)])
    thetas = counterfactual_sgd(obj, schedule, theta0, keeps)
    return sum((u[k] * (v[1:] - v[0])).flatten(1).sum(1) for k, v in thetas.items()).numpy()


@pytest.mark.parametrize("l2,batch_size,lr_decay", [(0.0, 1, "inv_sqrt"), (0.0, 7, "constant"),
                                                    (0.01, 7, "inv_sqrt")])
def test_exact_for_least_squares_over_several_epochs(l2, batch_size, lr_decay):
    obj, schedule, theta0, u = least_squares(l2, batch_size, lr_decay)
    everyone = torch.ones(N, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    truth = true_influence(obj, schedule, theta0, everyone, u)

    forward = forward_influence(obj, schedule, checkpoints, lambda k: everyone, u,
                                torch.arange(N)).numpy()
    algorithm_2 = retrace(obj, schedule, checkpoints, lambda k: everyone, u,
                          range(EPOCHS)).numpy()

    assert np.abs(truth).max() > 1e-3  # the test is not vacuous
    np.testing.assert_allclose(forward, truth, rtol=0, atol=1e-10)
    assert np.abs(algorithm_2 - truth).max() > 1e-4  # Algorithm 2 misses the cross-epoch term


def test_exact_with_removal_masks_and_any_subset():
    """Instances already removed (a retrained run) weigh 0: removing one of them again changes
    nothing, and the others stay exact. A subset M gives the same rows as all of N."""
    obj, schedule, theta0, u = least_squares(0.01, 7)
    keep = torch.ones(N, dtype=torch.bool)
    keep[[4, 11]] = False
    keep_at = lambda k: keep  # noqa: E731
    checkpoints = run_sgd(obj, schedule, theta0, keep_at)
    truth = true_influence(obj, schedule, theta0, keep, u)
    assert truth[4] == truth[11] == 0

    forward = forward_influence(obj, schedule, checkpoints, keep_at, u, torch.arange(N)).numpy()
    np.testing.assert_allclose(forward, truth, rtol=0, atol=1e-10)
    members = torch.tensor([30, 4, 2])
    subset = forward_influence(obj, schedule, checkpoints, keep_at, u, members).numpy()
    np.testing.assert_allclose(subset, forward[members.numpy()], rtol=0, atol=1e-14)


def test_refine_extremes_rescores_exactly_the_two_ends():
    obj, schedule, theta0, u = least_squares(0.0, 7)
    everyone = torch.ones(N, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    scores = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(EPOCHS))
    forward = forward_influence(obj, schedule, checkpoints, lambda k: everyone, u,
                                torch.arange(N))

    m = 5
    refined = refine_extremes(obj, schedule, checkpoints, lambda k: everyone, u, scores, m=m)

    order = np.argsort(scores.numpy(), kind="stable")
    ends = set(order[:m]) | set(order[-m:])
    changed = set(np.flatnonzero((refined != scores).numpy()))
    assert changed == ends and len(ends) == 2 * m
    ends = sorted(ends)
    torch.testing.assert_close(refined[ends], forward[ends], rtol=0, atol=1e-14)


def test_loss_at_displaced_parameters_is_exact_for_a_quadratic_query():
    """forward_loss_change evaluates the query loss at θ[T] + δ_j: for a quadratic model and
    query that is the true change of the query loss, where ⟨u, δ_j⟩ misses its curvature."""
    obj, schedule, theta0, _ = least_squares(0.01, 7)
    gen = torch.Generator().manual_seed(5)
    x_val = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    y_val = torch.randn(10, generator=gen, dtype=torch.float64)

    def query_loss(theta):
        return squared_loss(obj.outputs(theta, x_val), y_val).mean()

    everyone = torch.ones(N, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    keeps = torch.cat([everyone[None], ~torch.eye(N, dtype=torch.bool)])
    thetas = counterfactual_sgd(obj, schedule, theta0, keeps)
    with torch.no_grad():
        losses = torch.stack([query_loss({k: v[m] for k, v in thetas.items()})
                              for m in range(N + 1)])
    truth = (losses[1:] - losses[0]).numpy()

    change = forward_loss_change(obj, schedule, checkpoints, lambda k: everyone, query_loss,
                                 torch.arange(N)).numpy()
    u = loss_gradient(query_loss, checkpoints[EPOCHS])
    linear = forward_influence(obj, schedule, checkpoints, lambda k: everyone, u,
                               torch.arange(N)).numpy()

    np.testing.assert_allclose(change, truth, rtol=0, atol=1e-10)
    assert np.abs(linear - truth).max() > 1e-3  # the query's curvature, which ⟨u, δ⟩ drops
