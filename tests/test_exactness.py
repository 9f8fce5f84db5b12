"""Algorithm 2 is exact for a quadratic loss trained one epoch: each instance is used once, its
gradient enters θ linearly, and the Hessian of a quadratic loss does not depend on θ, so the
linearised retrace has no error. Every estimate equals the true ⟨u, θ_{−j}[T] − θ[T]⟩ from
brute-force counterfactual SGD."""
import numpy as np
import pytest
import torch

from helpers import least_squares
from influence.sgd import run_sgd
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
