"""Algorithm 2 is exact for a quadratic loss trained one epoch: each instance is used once, its
gradient enters θ linearly, and the Hessian of a quadratic loss does not depend on θ, so the
linearised retrace has no error. Every estimate equals the true ⟨u, θ_{−j}[T] − θ[T]⟩ from
brute-force counterfactual SGD. On any smooth model over any number of epochs it is the exact
derivative of counterfactual SGD in the instance's weight."""
import numpy as np
import pytest
import torch

from helpers import least_squares, logistic
from influence.sgd import SGDConfig, counterfactual_sgd, make_schedule, run_sgd
from influence.sgd_influence import retrace


@pytest.mark.parametrize("l2,lr_decay", [(0.0, "constant"), (0.01, "inv_sqrt")])
def test_linear_least_squares_one_epoch_is_exact(l2, lr_decay):
    n = 60
    obj, schedule, theta0, u = least_squares(n, 1, 7, l2, lr_decay)
    everyone = torch.ones(n, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    theta_T = checkpoints[1]

    estimate = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(1)).numpy()

    truth = np.empty(n)
    for j in range(n):
        keep = everyone.clone()
        keep[j] = False
        theta_minus_j = run_sgd(obj, schedule, theta0, lambda k: keep)[1]
        truth[j] = sum(float((u[k] * (theta_minus_j[k] - theta_T[k])).sum()) for k in u)
    assert np.abs(truth).max() > 1e-4  # the test is not vacuous
    np.testing.assert_allclose(estimate, truth, rtol=0, atol=1e-10)


def test_algorithm_2_is_the_derivative_over_many_epochs():
    """A network (one tanh layer: smooth, so no kink flips within ±ε) trained 4 epochs:
    weighting instance j by 1 − ε in every step it uses j changes ⟨u, θ[T]⟩ by ε·L̂_{−j}(u)
    to first order (central difference, float64), while removing j (ε = 1) is not linear."""
    n, eps = 30, 1e-5
    obj, theta0, u = logistic(n, hidden=6)
    schedule = make_schedule(n, SGDConfig(epochs=4, batch_size=8, lr=0.3, l2=0.01, seed=1))
    everyone = torch.ones(n, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    estimate = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(4)).numpy()

    weights = torch.ones(3 * n, n, dtype=torch.float64)  # counterfactual SGD weighs by keep
    for j in range(n):  # rows: 1 − ε, 1 + ε, removed
        weights[j, j], weights[n + j, j], weights[2 * n + j, j] = 1 - eps, 1 + eps, 0
    thetas = counterfactual_sgd(obj, schedule, theta0, weights)
    dot = sum((u[k] * thetas[k]).flatten(1).sum(1) for k in u).numpy()
    slope = (dot[:n] - dot[n:2 * n]) / (2 * eps)
    removal = dot[2 * n:] - sum(float((u[k] * checkpoints[4][k]).sum()) for k in u)
    assert np.abs(estimate).max() > 1e-2  # not vacuous
    np.testing.assert_allclose(slope, estimate, rtol=1e-6, atol=1e-9)
    assert np.abs(removal - estimate).max() > 1e3 * np.abs(slope - estimate).max()
