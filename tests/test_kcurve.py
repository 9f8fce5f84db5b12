"""How many to remove: the validation curve over k on the selection part, and its suggestion."""
import dataclasses

import numpy as np
import pytest

from influence import kcurve, methods, runs
from influence.config import RunConfig, RunError


def test_the_curve_retrains_every_top_k_and_random_set_in_one_go(digits_logreg):
    run = digits_logreg
    ranked = methods.rank(run, "sgd-last")
    frame, found = kcurve.curve(run, ranked, controls=2, ks=(0, 5, 50, 5000))
    ks = [0, 5, 50]  # 5000 is more than the training images: clipped
    assert frame[frame.kind == "top"].k.tolist() == ks
    assert len(frame) == len(ks) + 2 * (len(ks) - 1)
    assert (frame[frame.kind == "random"].groupby("k").draw.apply(list) == [[1, 2]] * 2).all()
    base_loss, base_error = run.evaluate("selection")
    none = frame.iloc[0]  # k = 0 retrains nothing away: the run's own model
    assert none.selection_loss == pytest.approx(base_loss, rel=1e-9)
    assert none.selection_error == base_error
    per_image = np.stack(frame.selection_losses.to_list())
    assert np.allclose(per_image.mean(1), frame.selection_loss, rtol=1e-9)
    top5 = run.retrain(ranked.sample_id[:5].tolist(), "last").evaluate("selection")[0]
    assert frame.selection_loss[1] == pytest.approx(top5, rel=1e-9)
    assert found["mode"] == "last" and found["k"] in ks and found["n_selection"] == len(
        run.selection)
    assert set(kcurve.band(frame).columns) >= {"k", "random_low_selection_loss",
                                                "random_high_selection_error"}


def test_a_run_without_a_selection_part_is_refused(digits_logreg):
    old = runs.Run(RunConfig(**{**dataclasses.asdict(digits_logreg.config),
                                "fingerprint": None, "selection_fraction": 0.0}))
    old.checkpoints = digits_logreg.checkpoints
    with pytest.raises(RunError, match="no selection images"):
        kcurve.curve(old, methods.rank(digits_logreg, "random"))


def test_sizes_are_clipped_to_the_images_in_use():
    assert kcurve.sizes(60) == [0, 5, 10, 20, 50]
    assert kcurve.sizes(2000) == list(kcurve.KS)
    assert kcurve.sizes(3, (10, 2)) == [0, 2]


def curves(shift, n=200, seed=0):
    """Per-image losses for k = 0, 10, 50: noise around 1, k = 10 lowered by `shift`."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.5, n)
    noise = rng.normal(0, 0.05, (3, n))
    losses = base + noise - noise.mean(1, keepdims=True)  # the same mean loss for every k
    losses[1] -= shift
    return np.array([0, 10, 50]), losses


def test_a_clear_dip_is_suggested_with_its_uncertainty():
    ks, losses = curves(shift=0.05)
    s = kcurve.suggest(ks, losses)
    assert s["helps"] and s["k"] == 10 == s["best_k"] and s["p_holm"] < 1e-6
    assert s["stability"] > 0.95 and s["k_low"] == s["k_high"] == 10
    assert s["sentence"].startswith("Suggested: remove the top 10")


def test_no_real_dip_says_removing_does_not_help():
    ks, losses = curves(shift=0.0)
    s = kcurve.suggest(ks, losses)
    assert not s["helps"] and s["k"] == 0
    assert kcurve.NO_HELP in s["sentence"].lower()
    losses[2] += 0.1  # removing makes it worse: k = 0 is lowest
    s = kcurve.suggest(ks, losses)
    assert s["best_k"] == 0 and s["k"] == 0 and "removing nothing has the lowest" in s["sentence"]


def test_a_tiny_dip_among_many_sizes_is_not_taken_for_a_finding():
    ks, losses = curves(shift=0.002)  # lowest mean, but within the noise
    s = kcurve.suggest(ks, losses)
    assert s["best_k"] == 10 and not s["helps"] and s["k"] == 0
    with pytest.raises(ValueError):
        kcurve.suggest(np.array([5, 10]), losses[:2])
