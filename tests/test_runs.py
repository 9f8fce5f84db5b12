"""Runs: deterministic replay, checkpoint round trip, Definition 2, the empty-removal identity."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from influence import methods, run_folder, runs, trust
from influence.config import RunConfig, RunError
from influence.counterfactual import outcomes
from influence.sgd import Diverged, batch_weights, per_sample_loss, replay_epoch, sgd_step

CONFIG = dict(dataset="digits", epochs=3, batch_size=32, seed=1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    run = run_folder.train_new(RunConfig(**CONFIG), out)
    return run, out


def params_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_replay_is_bit_identical_to_training(saved):
    run, _ = saved
    for k in range(run.schedule.epochs):
        keep = run.keep_at(k)
        thetas = replay_epoch(run.objective, run.schedule, run.checkpoints[k], k, keep)
        assert len(thetas) == run.schedule.steps_per_epoch
        last_t = run.schedule.epoch_steps(k)[-1]
        idx = torch.as_tensor(run.schedule.batch(last_t))
        end, _ = sgd_step(run.objective, thetas[-1], idx, float(run.schedule.lr[last_t]), keep)
        assert params_equal(end, run.checkpoints[k + 1])


def test_checkpoint_round_trip(saved):
    run, out = saved
    loaded = run_folder.load(out)
    assert loaded.checkpoints.keys() == run.checkpoints.keys()
    for k in run.checkpoints:
        assert params_equal(loaded.checkpoints[k], run.checkpoints[k])
    assert loaded.evaluate("val") == run.evaluate("val")
    np.testing.assert_array_equal(loaded.influence(last_epoch_only=True),
                                  run.influence(last_epoch_only=True))


def test_run_folder_holds_one_checkpoint_per_epoch(saved):
    run, out = saved
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoints.safetensors", "config.json", "log.csv", "metrics.json",
                     "predictions.csv", "schedule.safetensors", "weights.safetensors"]
    n_params = sum(p.numel() for p in run.theta.values())
    per_step_bytes = run.schedule.steps * n_params * 4
    stored = sum(p.stat().st_size for p in out.iterdir())
    assert stored < per_step_bytes / 2  # (K+1) checkpoints, not one per step (3 epochs here)
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == run.schedule.steps + 1


@pytest.mark.parametrize("mode", ["all", "last"])
def test_empty_removal_reproduces_the_run_exactly(saved, mode):
    run, _ = saved
    child = run.retrain([], mode)
    assert params_equal(child.theta, run.theta)
    assert child.metrics["val_loss"] == run.metrics["val_loss"]
    assert child.metrics["test_error"] == run.metrics["test_error"]


def test_counterfactual_step_keeps_the_divisor(saved):
    """Definition 2: θ − η/|S_t| Σ_{i≠j} g_i, checked against per-sample autograd."""
    run, _ = saved
    obj, theta = run.objective, run.checkpoints[1]
    idx = torch.as_tensor(run.schedule.batch(0))
    keep = torch.ones(len(run.train_ids), dtype=torch.bool)
    keep[idx[3]] = False
    lr = 0.1
    new, _ = sgd_step(obj, theta, idx, lr, keep)
    expected = {k: v.clone() for k, v in theta.items()}
    for i in idx.tolist():
        if not keep[i]:
            continue
        params = {k: v.clone().requires_grad_() for k, v in theta.items()}
        loss = obj.losses(params, torch.tensor([i]))[0].sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (k, v), g in zip(expected.items(), grads):
            v -= lr / len(idx) * g
    for k in new:
        torch.testing.assert_close(new[k], expected[k], rtol=1e-5, atol=1e-6)
    assert batch_weights(keep, idx, torch.float32).sum() == pytest.approx((len(idx) - 1) / len(idx))


def test_removal_changes_the_run_and_is_recorded(saved, tmp_path):
    run, out = saved
    worst = methods.rank(run, "sgd-last").sample_id[:5].tolist()
    child = run_folder.retrain_saved(run_folder.load(out), worst, "all", tmp_path / "child")
    assert child.metrics["train_size"] == run.metrics["train_size"] - 5
    assert not params_equal(child.theta, run.theta)
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert set(config["removed"]) == set(worst) and config["parent"] == str(out)
    again = run_folder.load(tmp_path / "child")
    assert set(methods.rank(again, "sgd-last").sample_id).isdisjoint(worst)


def test_query_can_be_any_loss(saved):
    run, _ = saved
    test_obj = run.part("test")

    def one_test_image_loss(theta):
        return per_sample_loss(test_obj.outputs(theta, test_obj.x[:1]), test_obj.y[:1])[0]

    scores = run.influence(one_test_image_loss, last_epoch_only=True)
    assert scores.shape == (len(run.train_ids),) and np.isfinite(scores).all()
    assert not np.allclose(scores, run.influence(last_epoch_only=True))


def test_trust_check_reports_tau_and_signs(saved):
    run, _ = saved
    result = trust.of_ranking(run, "sgd-last", n=6)
    assert result["n"] == 6 and -1 <= result["tau"] <= 1
    assert 0 <= result["sign_agreement"] <= 1
    assert len(result["rows"]) == 6


@pytest.fixture(scope="module")
def logreg():
    """Logistic regression on the digits, float64: a model whose estimates are close to the
    truth, so that the trust check must find agreement."""
    run = runs.Run(RunConfig(dataset="digits", model="logreg", epochs=2, lr=0.5,
                             dtype="float64"))
    run.train()
    return run


def test_the_trust_check_agrees_on_a_convex_model_and_catches_a_flipped_sign(logreg):
    result = trust.of_ranking(logreg, "sgd", n=10)
    assert result["tau"] > 0.5 and result["sign_agreement"] >= 0.8, result
    assert result["groups"] == trust.GROUPS and result["group_spearman"] > 0.8, result
    ranked = methods.rank(logreg, "sgd")
    flipped = trust.retraining_agreement(logreg, ranked.assign(influence=-ranked.influence), "all", n=10)
    assert flipped["tau"] < -0.5 and flipped["group_spearman"] < -0.8  # a sign error fails


def test_many_removals_in_one_vectorised_run_match_one_by_one_retraining(logreg):
    ids = logreg.train_ids
    removals = [[], ids[:1], ids[5:40]]
    rows = outcomes(logreg, removals, "all")
    for ids_removed, row in zip(removals, rows.itertuples()):
        alone = logreg.retrain(ids_removed, "all") if ids_removed else logreg
        assert row.val_loss == pytest.approx(alone.evaluate("val")[0], rel=1e-9)
        assert row.test_error == pytest.approx(alone.evaluate("test")[1], abs=1e-12)
    with torch.no_grad():
        query = float(logreg.query_loss()(logreg.theta))
    assert rows.query_loss[0] == pytest.approx(query, rel=1e-9)
    assert rows.selection_loss[0] == pytest.approx(logreg.evaluate("selection")[0], rel=1e-9)


def test_a_run_never_changes_the_config_it_is_given():
    config = RunConfig(dataset="digits", epochs=1)
    before = dataclasses.asdict(config)
    run = runs.Run(config)
    assert dataclasses.asdict(config) == before
    assert run.config.lr == run.preset.lr and run.config.fingerprint == run.data.fingerprint()


@pytest.mark.parametrize("field, value", [("epochs", "2"), ("lr", True), ("removed", ["a"]),
                                          ("removed", {"a": "0"}), ("seed", 1.5),
                                          ("device", None)])
def test_the_config_validator_refuses_wrong_types(field, value):
    with pytest.raises(RunError, match=f"{field} has the wrong type"):
        RunConfig(**{field: value}).validate()


def test_divergence_is_reported_with_a_suggested_learning_rate():
    # with η·α = 50 the L2 term alone multiplies θ by (1 − 50) each step
    run = runs.Run(RunConfig(dataset="digits", epochs=2, lr=5.0, l2=10.0, model="logreg"))
    with pytest.raises(Diverged) as err:
        run.train()
    assert err.value.suggested_lr == pytest.approx(0.5)
    assert "try 0.5" in str(err.value)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(batch_size=100000),
                                 dict(model="resnet")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(RunError):
        runs.Run(RunConfig(**{**CONFIG, **bad}))


def test_unwritable_output_is_a_clear_error(saved, tmp_path):
    run, _ = saved
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="cannot write the run"):
        run_folder.save(run, blocker / "run")


def test_disk_full_leaves_nothing_behind(saved, tmp_path, monkeypatch):
    import errno

    run, _ = saved

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "save_file", no_space)
    with pytest.raises(RunError, match="No space left on device"):
        run_folder.save(run, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []  # no half-written run, no temporary folder


def test_the_query_can_leave_validation_images_out_but_not_all(logreg):
    val_ids = [logreg.data.ids[i] for i in logreg.split.val
               if logreg.data.ids[i] not in logreg.selection_ids]  # the query's images
    some = logreg.query_loss(val_ids[:20])
    with torch.no_grad():  # sum of all, minus the first 20's
        rest = float(logreg.query_loss()(logreg.theta)) * len(val_ids)
    first = logreg.query_loss(val_ids[20:])  # only the first 20 kept
    with torch.no_grad():
        mixed = (float(some(logreg.theta)) * (len(val_ids) - 20)
                 + float(first(logreg.theta)) * 20)
    assert mixed == pytest.approx(rest, rel=1e-9)
    with pytest.raises(RunError, match="every validation image is left out"):
        logreg.query_loss(val_ids)


def test_half_the_validation_part_is_held_out_of_the_query_to_select_k(logreg):
    val, selection = set(logreg.split.val), set(logreg.selection)
    assert selection < val and abs(len(selection) - len(val) / 2) <= 1
    again = runs.Run(RunConfig(**{**dataclasses.asdict(logreg.config), "fingerprint": None}))
    assert np.array_equal(again.selection, logreg.selection)  # the run's seed fixes it
    other = runs.Run(RunConfig(dataset="digits", model="logreg", epochs=2, seed=1))
    assert not np.array_equal(other.selection, logreg.selection)
    query_part = sorted(val - selection)
    obj = logreg.part("val")
    rows = [list(logreg.split.val).index(i) for i in query_part]
    with torch.no_grad():
        by_hand = float(per_sample_loss(obj.outputs(logreg.theta, obj.x[rows]), obj.y[rows])
                        .mean())
        assert float(logreg.val_loss_fn(logreg.theta)) == pytest.approx(by_hand, rel=1e-12)
        # a left-out validation image is left out on top of the selection part
        left_out = logreg.data.ids[query_part[0]]
        fewer = float(logreg.query_loss([left_out])(logreg.theta))
    one = float(per_sample_loss(obj.outputs(logreg.theta, obj.x[rows[:1]]), obj.y[rows[:1]]))
    assert fewer * (len(rows) - 1) + one == pytest.approx(by_hand * len(rows), rel=1e-9)


def test_no_selection_part_keeps_the_whole_validation_part_as_the_query(logreg):
    whole = runs.Run(RunConfig(**{**dataclasses.asdict(logreg.config), "fingerprint": None,
                                  "selection_fraction": 0.0}))
    assert len(whole.selection) == 0 and not whole.selection_ids
    with torch.no_grad():
        assert float(whole.val_loss_fn(logreg.theta)) == pytest.approx(
            whole.evaluate("val", logreg.theta)[0], rel=1e-12)
    assert np.isnan(whole.evaluate("selection", logreg.theta)[0])


def test_a_run_saved_before_the_selection_part_still_uses_its_whole_validation_part(saved,
                                                                                     tmp_path):
    out = shutil.copytree(saved[1], tmp_path / "old")
    raw = json.loads((out / "config.json").read_text())
    assert raw["selection_fraction"] == 0.5
    del raw["selection_fraction"]
    (out / "config.json").write_text(json.dumps(raw))
    old = run_folder.load(out)
    assert old.config.selection_fraction == 0.0 and len(old.selection) == 0
    with pytest.raises(RunError, match="selection share"):
        RunConfig(selection_fraction=0.95).validate()
