"""Defaults that train: epochs from the data size, a learning-rate probe, and a guard that says
when a model learned nothing (then nothing is ranked)."""
import pytest

import datasets
from helpers import button, new_app, ok, set_lr, text, wait_for_job
from influence import cli, probe, run_folder, runs
from influence.config import MAX_EPOCHS, MIN_EPOCHS, MIN_STEPS, RunConfig, default_epochs


@pytest.fixture(scope="module")
def shapes():
    return datasets.load_shapes(300)


def test_default_epochs_give_enough_steps():
    assert default_epochs(1077, 64) == 36  # 17 steps an epoch → 612 steps
    assert default_epochs(180, 64) == MAX_EPOCHS  # 3 an epoch: capped at 600 steps
    assert default_epochs(60_000, 64) == MIN_EPOCHS


@pytest.mark.slow
def test_a_small_colour_upload_trains_with_the_defaults(shapes, tmp_path):
    """Shapes on random backgrounds, 300 images of 32×32: the CIFAR-size CNN, the probe's rate
    and the default epochs learn them well below chance."""
    run = probe.train_with_probe(RunConfig(), tmp_path / "run", shapes)
    assert run.preset.name == "cnn-cifar" and run.schedule.steps >= MIN_STEPS
    assert run.metrics["learned"], run.metrics["lr_probe"]
    assert run.metrics["val_loss"] < 0.6 * run.metrics["chance_loss"]
    assert run.metrics["test_error"] < 0.4  # chance: 2/3
    found = run.metrics["lr_probe"]
    assert found["lr"] in found["rates"] and "probe" in found["reason"]


def test_the_probe_keeps_a_rate_below_the_largest_steady_one_and_skips_a_diverging_one():
    run = runs.Run(RunConfig(model="logreg", epochs=4, l2=1.0))
    found = probe.choose_lr(run, factors=(1.0, 3.0, 100.0))  # 100 × 0.1 with α = 1: explodes
    assert found["losses"][2] == float("inf") and "diverged" in found["reason"]
    assert found["lr"] == pytest.approx(found["rates"][0])
    assert run.checkpoints == {}  # the probe never touches the recorded run


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory):
    """A run cut to a handful of steps with a tiny rate: it learned nothing."""
    out = tmp_path_factory.mktemp("unlearned") / "run"
    run_folder.train_new(RunConfig(model="logreg", epochs=1, lr=1e-4), out)
    return out


def test_the_guard_fires_on_a_run_that_learned_nothing(unlearned, capsys):
    run = run_folder.load(unlearned)
    assert not run.metrics["learned"]
    assert run.metrics["val_loss"] > runs.LEARNED * run.metrics["chance_loss"]
    assert cli.main(["score", str(unlearned)]) == cli.EXIT_ERROR
    assert "did not learn" in capsys.readouterr().err
    assert not (unlearned / "influence.csv").exists()
    assert cli.main(["score", str(unlearned), "--method", "sgd-last", "--force"]) == 0
    assert (unlearned / "influence.csv").exists()


def test_cli_train_warns_when_the_model_did_not_learn(tmp_path, capsys):
    code = cli.main(["train", "--model", "logreg", "--epochs", "1", "--lr", "0.0001",
                     "--out", str(tmp_path / "run")])
    assert code == 0 and "warning: the model did not learn" in capsys.readouterr().err


def test_the_app_says_so_and_refuses_to_rank(workspace):
    at = new_app().switch_page("views/train.py").run()
    at.selectbox(key="model_choice").set_value("logreg").run()
    at.number_input(key="epochs").set_value(1)
    set_lr(at, "logreg", 0.0001)
    button(at.run(), "Start training").click().run()
    wait_for_job(at)
    ok(at.run())
    assert "This model did not learn" in text(at)
    assert any(b.label.startswith("Train longer") for b in at.button)
    at.switch_page("views/harmful.py").run()
    assert "This model did not learn" in text(ok(at))
    assert not [r for r in at.radio if r.key == "score_method"]  # nothing to rank with
