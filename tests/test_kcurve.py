"""How many to remove: the validation curve over k on the selection part, and its suggestion."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from influence import compare, kcurve, methods, runs
from influence.config import RunConfig, RunError


def test_the_curve_retrains_every_top_k_and_random_set_in_one_go(digits_logreg):
    run = digits_logreg
    ranked = methods.rank(run, "sgd-last")
    flagged = ranked.sample_id[[0, 2, 30]].tolist() + ["not-a-training-id"]
    frame, found = kcurve.curve(run, ranked, controls=2, ks=(0, 5, 50, 5000), flagged=flagged)
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
                                                "random_high_selection_error", "flagged"}
    assert frame[frame.kind == "top"].flagged.tolist() == [0, 2, 3]  # what each top k holds
    assert found["flagged_total"] == 3 and found["flagged_in_set"] in (2, 3)
    assert "flagged by the label check (3 flagged in all" in found["sentence"]
    json.dumps(found)  # kept with the job's result


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


def constructed(top_loss, top_error, random_loss, random_error, controls=10, n=200,
                spread=0.004, seed=0) -> pd.DataFrame:
    """A curve frame for k = 0, 10, 50: the top-k's per-image selection losses (gamma noise,
    the same images for every k, shifted to the given mean loss) and errors, and `controls`
    random sets of each size around the given means (random_*: one value per k > 0)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.5, n)
    rows = []
    for k, loss, error in zip((0, 10, 50), top_loss, top_error):
        per_image = base - base.mean() + loss + rng.normal(0, 0.01, n)
        rows.append({"kind": "top", "k": k, "draw": 0, "selection_loss": per_image.mean(),
                     "selection_error": error, "selection_losses": per_image})
    for k, loss, error in zip((10, 50), random_loss, random_error):
        for d in range(controls):
            rows.append({"kind": "random", "k": k, "draw": d + 1,
                         "selection_loss": loss + rng.normal(0, spread),
                         "selection_error": error + rng.normal(0, spread), "selection_losses":
                         base})
    return pd.DataFrame(rows)


def test_a_top_k_that_beats_random_sets_and_removing_nothing_is_suggested():
    frame = constructed(top_loss=(1.0, 0.9, 0.99), top_error=(0.20, 0.15, 0.20),
                        random_loss=(1.0, 1.0), random_error=(0.20, 0.20))
    s = kcurve.suggest(frame)
    assert s["helps"] and s["k"] == 10 == s["candidate"] == s["best_k"]
    assert s["p_holm"] < 1e-4 and s["random_test"] == "prediction interval"
    assert s["stability"] > 0.95 and s["k_low"] == s["k_high"] == 10
    assert s["sentence"].startswith("Suggested: remove the top 10. On the 200 held-out "
                                    "selection images this lowers the error from 20.0% to "
                                    "15.0%, and removing 10 random images instead gives 20.0%")
    assert [row["passes"] for row in s["sizes"]] == [True, False]


def test_beating_removing_nothing_is_not_enough_without_beating_random_sets():
    """The top 10 lowers loss and error against k = 0 (a paired t-test over the images says so
    clearly), but removing 10 random images does as well: no suggestion."""
    frame = constructed(top_loss=(1.0, 0.9, 0.99), top_error=(0.20, 0.15, 0.20),
                        random_loss=(0.9, 1.0), random_error=(0.15, 0.20))
    s = kcurve.suggest(frame)
    assert s["p_none"] < 1e-6  # beats k = 0 …
    assert not s["helps"] and s["k"] == 0  # … but not random sets of its size
    assert s["sentence"].startswith(kcurve.NO_HELP.capitalize() + ": on the 200 held-out "
                                    "selection images no size tried did clearly better than "
                                    "removing as many random images")


def test_beating_random_sets_is_not_enough_when_worse_than_removing_nothing():
    frame = constructed(top_loss=(1.0, 1.05, 1.2), top_error=(0.20, 0.22, 0.30),
                        random_loss=(1.2, 1.3), random_error=(0.3, 0.35))
    s = kcurve.suggest(frame)
    assert not s["helps"] and s["k"] == 0 and s["p_holm"] < 0.05 and not s["not_worse"]
    assert "worse off than removing nothing" in s["sentence"]


def test_both_error_and_loss_must_beat_random_and_holm_covers_every_size():
    frame = constructed(top_loss=(1.0, 0.9, 0.99), top_error=(0.20, 0.15, 0.20),
                        random_loss=(0.9, 1.0), random_error=(0.20, 0.20))  # error only
    tests = kcurve.size_tests(frame)
    assert tests.p_error[0] < 1e-4 and tests.p_loss[0] > 0.05 and tests.p[0] == tests.p_loss[0]
    assert tests.p_holm.tolist() == pytest.approx(compare.holm(tests.p))
    assert not tests.passes.any() and not kcurve.suggest(frame)["helps"]


def test_without_random_sets_nothing_is_suggested():
    frame = constructed(top_loss=(1.0, 0.9, 0.99), top_error=(0.20, 0.15, 0.20),
                        random_loss=(1.0, 1.0), random_error=(0.2, 0.2), controls=0)
    s = kcurve.suggest(frame)
    assert not s["helps"] and "no random sets were removed" in s["sentence"]
    with pytest.raises(ValueError):
        kcurve.suggest(frame[frame.k != 0])
