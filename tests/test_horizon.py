"""The retrace variants of influence/horizon.py are what they claim: the damped retrace is exact
for counterfactual SGD whose displacement from the recorded run decays by (1 − λη_t) per step
(a quadratic loss, one epoch, float64); Gauss-Newton curvature equals the Hessian on a model
linear in θ and gives the same ⟨u, g_i⟩ on any model; a horizon of E epochs is the sum of the
last E per-epoch contributions of the full retrace."""
import numpy as np
import pytest
import torch

from helpers import least_squares, logistic
from influence.horizon import epoch_shares, growth_summary, horizons, retrace_by_epoch
from influence.sgd import SGDConfig, make_schedule, run_sgd, sgd_step
from influence.sgd_influence import forward_over_reverse, gauss_newton_pass, retrace


def decayed_counterfactual(obj, schedule, theta0, keep, damping):
    """θ_{−j}[T] of counterfactual SGD (Definition 2) whose displacement from the recorded run
    is multiplied by (1 − λη_t) after every step: weight decay towards the recorded θ[t+1]."""
    everyone = torch.ones_like(keep)
    theta, theta_minus = theta0, theta0
    for t in range(schedule.steps):
        idx = torch.as_tensor(schedule.batch(t))
        eta = float(schedule.lr[t])
        theta_next = sgd_step(obj, theta, idx, eta, everyone)[0]
        moved = sgd_step(obj, theta_minus, idx, eta, keep)[0]
        theta_minus = {k: theta_next[k] + (1 - damping * eta) * (moved[k] - theta_next[k])
                       for k in theta}
        theta = theta_next
    return theta_minus, theta


@pytest.mark.parametrize("damping,l2,lr_decay", [(0.5, 0.0, "constant"),
                                                 (2.0, 0.01, "inv_sqrt")])
def test_damped_retrace_is_exact_for_decayed_counterfactual(damping, l2, lr_decay):
    n = 40
    obj, schedule, theta0, u = least_squares(n, 1, 7, l2, lr_decay)
    everyone = torch.ones(n, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    estimate = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(1),
                       damping=damping).numpy()
    plain = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(1)).numpy()
    truth = np.empty(n)
    for j in range(n):
        keep = everyone.clone()
        keep[j] = False
        theta_minus, theta_T = decayed_counterfactual(obj, schedule, theta0, keep, damping)
        truth[j] = sum(float((u[k] * (theta_minus[k] - theta_T[k])).sum()) for k in u)
    assert np.abs(truth).max() > 1e-4  # not vacuous
    assert np.abs(plain - truth).max() > 1e-4  # the damping changes the answer
    np.testing.assert_allclose(estimate, truth, rtol=0, atol=1e-12)


def test_zero_damping_is_algorithm_2():
    obj, schedule, theta0, u = least_squares(30, 2, 8, 0.0, "constant")
    everyone = torch.ones(30, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    a = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(2))
    b = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(2), damping=0.0)
    assert torch.equal(a, b)


def test_gauss_newton_is_the_hessian_of_a_linear_model():
    obj, theta0, u = logistic()
    schedule = make_schedule(50, SGDConfig(epochs=3, batch_size=8, lr=0.3, l2=0.01, seed=1))
    everyone = torch.ones(50, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    exact = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(3))
    gn = retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(3),
                 curvature="gauss-newton")
    assert exact.abs().max() > 1e-3
    torch.testing.assert_close(gn, exact, rtol=1e-10, atol=1e-12)


def test_gauss_newton_on_a_network():
    """Same ⟨u, g_i⟩ as the Hessian pass (both exact), a different curvature, and G is positive
    semi-definite: ⟨v, Gv⟩ ≥ 0 for every v tried, where ⟨v, Hv⟩ < 0 for some."""
    obj, theta, u = logistic(hidden=6)
    idx = torch.arange(20)
    w = torch.full((20,), 1 / 20, dtype=torch.float64)
    w[3] = 0  # a removed instance
    hu, dots, out, ju = forward_over_reverse(obj, theta, idx, w, u)
    gu, gdots, gout, gju = gauss_newton_pass(obj, theta, idx, w, u)
    torch.testing.assert_close(gdots, dots, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gju, ju)
    assert max(float((hu[k] - gu[k]).abs().max()) for k in hu) > 1e-6
    gen = torch.Generator().manual_seed(5)
    quad_h, quad_g = [], []
    for _ in range(30):
        v = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64) for k, p in
             theta.items()}
        quad_h.append(sum(float((v[k] * forward_over_reverse(obj, theta, idx, w, v)[0][k]
                                 ).sum()) for k in v))
        quad_g.append(sum(float((v[k] * gauss_newton_pass(obj, theta, idx, w, v)[0][k]
                                 ).sum()) for k in v))
    assert min(quad_g) >= -1e-12
    assert min(quad_h) < 0


def test_horizons_are_partial_retraces():
    obj, schedule, theta0, u = least_squares(30, 4, 8, 0.0, "constant")
    everyone = torch.ones(30, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    keep = lambda k: everyone  # noqa: E731
    contrib, steps = retrace_by_epoch(obj, schedule, checkpoints, keep, u, range(4),
                                      damping=0.3)
    full = retrace(obj, schedule, checkpoints, keep, u, range(4), damping=0.3)
    torch.testing.assert_close(contrib.sum(0), full, rtol=1e-12, atol=1e-14)
    by_e = horizons(contrib)
    for e in (1, 2, 4):
        part = retrace(obj, schedule, checkpoints, keep, u, range(4 - e, 4), damping=0.3)
        torch.testing.assert_close(by_e[e], part, rtol=1e-12, atol=1e-14)
    assert len(steps) == schedule.steps and (steps.norm > 0).all()
    # the recorded growth multiplies up to the size of u at the end of the retrace
    assert growth_summary(steps)["growth"] == pytest.approx(
        steps.norm.iloc[-1] * steps.growth.iloc[-1] / steps.norm.iloc[0], rel=1e-9)
    assert float(epoch_shares(contrib).sum()) == pytest.approx(1.0)


def test_run_influence_takes_the_variants():
    """Run.influence passes damping and curvature to the retrace and refuses bad values: on a
    logistic regression Gauss-Newton is the Hessian, and damping changes the scores."""
    from influence.config import RunConfig, RunError
    from influence.runs import Run

    run = Run(RunConfig(dataset="digits", model="logreg", epochs=2, lr=0.5, dtype="float64"))
    run.train()
    exact = run.influence()
    np.testing.assert_allclose(run.influence(curvature="gauss-newton"), exact, rtol=1e-9,
                               atol=1e-12)
    damped = run.influence(damping=1.0)
    assert np.abs(damped - exact).max() > 1e-3 * np.abs(exact).max()
    # the registry's damped ranking is this retrace with its λ
    from influence import methods
    np.testing.assert_array_equal(methods.position_scores(run, "sgd-damped"),
                                  run.influence(damping=methods.DAMPING))
    with pytest.raises(RunError, match="damping must be 0 or more"):
        run.influence(damping=-1.0)
    with pytest.raises(RunError, match="unknown curvature"):
        run.influence(curvature="newton")
