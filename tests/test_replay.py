"""The epoch replay that keeps every ⌈√T_k⌉-th θ: bit-identical θ[t] to keeping every θ, for any
epoch length, read in any order, with every recomputed step reported as progress."""
import math

import pytest
import torch

from helpers import least_squares
from influence.sgd import checkpoint_every, replay_epoch, replayed_steps, sgd_step


def full_replay(obj, schedule, theta, k, keep, labels=None):
    """θ before every step of epoch k, each one kept (what replay_epoch held before)."""
    thetas = [theta]
    for t in schedule.epoch_steps(k)[:-1]:
        idx = torch.as_tensor(schedule.batch(t))
        thetas.append(sgd_step(obj, thetas[-1], idx, float(schedule.lr[t]), keep,
                               labels=labels)[0])
    return thetas


def identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("steps", [1, 2, 9, 13, 17])  # one, two, a perfect square, primes
def test_segment_replay_is_bit_identical_to_the_full_replay(steps):
    n, batch = 3 * steps - 1, 3  # the last batch is smaller
    obj, schedule, theta0, _ = least_squares(n, 2, batch, 0.01, "inv_sqrt")
    keep = torch.ones(n, dtype=torch.bool)
    keep[1] = False
    theta1 = full_replay(obj, schedule, theta0, 0, keep)[-1]  # a start that is not θ[1]
    for k, theta in ((0, theta0), (1, theta1)):
        truth = full_replay(obj, schedule, theta, k, keep)
        assert len(truth) == steps == schedule.steps_per_epoch
        assert steps == 1 or not identical(truth[0], truth[-1])  # the steps move θ

        seen = []
        backwards = replay_epoch(obj, schedule, theta, k, keep, seen.append)
        assert len(backwards) == steps
        for t, (a, b) in enumerate(zip(reversed(backwards), reversed(truth))):
            assert identical(a, b), t
        assert len(seen) == replayed_steps(steps)  # each recomputed step is reported
        assert set(seen) <= set(schedule.epoch_steps(k)[:-1])
        every = checkpoint_every(steps)
        assert every == math.ceil(math.sqrt(steps))
        assert len(backwards.kept) == math.ceil(steps / every)  # ≈ √T_k θ kept, not T_k
        assert len(backwards.segment) <= every

        forwards = replay_epoch(obj, schedule, theta, k, keep)
        assert all(identical(a, b) for a, b in zip(forwards, truth, strict=True))
        scattered = replay_epoch(obj, schedule, theta, k, keep)
        for t in [steps - 1, 0, steps // 2, -1, -steps, *range(steps)]:
            assert identical(scattered[t], truth[t]), t
        with pytest.raises(IndexError):
            scattered[steps]


def test_segment_replay_uses_the_epochs_labels():
    steps = 11
    obj, schedule, theta0, _ = least_squares(3 * steps, 1, 3, 0.0, "constant")
    keep = torch.ones(3 * steps, dtype=torch.bool)
    labels = obj.y.clone()
    labels[::4] += 1.0  # some targets changed (a run with fixed labels)
    truth = full_replay(obj, schedule, theta0, 0, keep, labels)
    assert not identical(truth[-1], full_replay(obj, schedule, theta0, 0, keep)[-1])
    replay = replay_epoch(obj, schedule, theta0, 0, keep, labels=labels)
    for t, (a, b) in enumerate(zip(reversed(replay), reversed(truth))):
        assert identical(a, b), t


def test_replayed_steps_is_about_one_extra_replay():
    assert replayed_steps(1) == 0
    assert replayed_steps(100) == 99 + 9 * 9
    assert replayed_steps(100, every=1) == 99  # every θ kept: no recomputation
    for steps in (50, 782, 10_000):
        assert steps - 1 < replayed_steps(steps) < 2 * steps
