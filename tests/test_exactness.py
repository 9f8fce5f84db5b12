"""Algorithm 2 is exact for a quadratic loss trained one epoch: every estimate equals the true
⟨u, θ_{−j}[T] − θ[T]⟩ from brute-force counterfactual SGD."""
import numpy as np
import pytest
import torch
from torch import nn

from influence.sgd import Objective, SGDConfig, initial_params, make_schedule, run_sgd
from influence.sgd_influence import retrace


def squared_loss(out, y):
    return 0.5 * (out[:, 0] - y) ** 2


def least_squares(n: int, epochs: int, batch_size: int, l2: float, lr_decay: str):
    """A linear model with squared loss on n random instances (5 features, float64), its SGD
    schedule, θ[1] and a random query u."""
    gen = torch.Generator().manual_seed(0)
    d = 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(d, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        n, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    model = nn.Linear(d, 1).double()
    obj = Objective(model, x, y, l2=l2, loss=squared_loss)
    cfg = SGDConfig(epochs=epochs, batch_size=batch_size, lr=0.05, lr_decay=lr_decay, l2=l2,
                    seed=3)
    theta0 = initial_params(model, "cpu", torch.float64)
    u = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta0.items()}
    return obj, make_schedule(n, cfg), theta0, u


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
