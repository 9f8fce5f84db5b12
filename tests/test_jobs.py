"""Background jobs: they run the engine, report progress, can be cancelled, never duplicate, keep
sessions apart, and leave the store right whatever happens (even a killed server)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import datasets
from app import words
from app.services import jobs, runner, timing
from app.services.store import CANCELLED, DONE, FAILED, INTERRUPTED, RUNNING, Store
from influence import cleaning, methods, run_folder
from influence.config import RunConfig, RunError

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    runner.use_cpu_threads()  # results computed here and in job threads then match bit for bit
    return Store(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def digits_id(ws):
    return ws.add_dataset(datasets.load("digits"), "digits", "s")["id"]


@pytest.fixture(scope="module")
def trained(ws, digits_id):
    job = jobs.start_training(ws, "trainer", digits_id, RunConfig(**FAST)).wait(120)
    assert job.status == DONE, job.error
    return job


def test_training_reports_progress_curves_log_and_predictions(ws, trained):
    run_id = trained.result["run"]
    row = ws.run(run_id)
    assert row["status"] == DONE and row["config"]["lr"] == 0.2  # the preset's default
    assert trained.done == trained.total == row["metrics"]["steps"]
    curve = trained.curve("train")
    assert len(curve) == row["metrics"]["steps"] and curve.val_loss.notna().sum() == 2
    assert any(line.endswith("%") and "epoch 2 of 2" in line for line in trained.lines)
    preds = ws.predictions(run_id)
    test = preds[preds.part == "test"]
    assert np.mean(test.predicted != test.label) == pytest.approx(row["metrics"]["test_error"])
    assert ((preds.confidence > 0) & (preds.confidence <= 1)).all()
    reopened = ws.open_run(run_id)  # the engine reads back what the job wrote
    assert reopened.metrics["val_loss"] == row["metrics"]["val_loss"]


def test_a_second_start_finds_the_running_job_and_another_kind_is_refused(ws, digits_id,
                                                                           trained):
    job = jobs.start_training(ws, "dup", digits_id, RunConfig(epochs=200))
    try:
        assert jobs.start_training(ws, "dup", digits_id, RunConfig(epochs=200)) is job
        with pytest.raises(runner.Busy, match="Training is still running"):
            jobs.start_scoring(ws, "dup", trained.result["run"], "sgd-last")
        assert [j.id for j in runner.jobs_of("dup")] == [job.id]
        assert runner.active("someone-else") is None  # sessions never see each other's jobs
        assert runner.latest("trainer").id == trained.id
    finally:
        job.cancel()
        job.wait(60)
    assert job.status == CANCELLED
    row = ws.run(job.result["run"])
    assert row["status"] == CANCELLED
    assert not ws.run_folder(row["id"]).exists()  # nothing half-written
    assert len([r for r in ws.runs() if r["status"] == RUNNING]) == 0


def test_divergence_fails_the_job_with_a_suggested_learning_rate(ws, digits_id):
    job = jobs.start_training(ws, "div", digits_id,
                              RunConfig(epochs=2, lr=5.0, l2=1.0)).wait(60)
    assert job.status == FAILED and job.suggested_lr == pytest.approx(0.5)
    assert "too high for this data: try 0.5" in job.error
    row = ws.run(job.result["run"])
    assert row["status"] == FAILED and "try 0.5" in row["error"]


def test_bad_settings_are_refused_before_anything_starts(ws, digits_id):
    before = len(ws.runs())
    with pytest.raises(RunError, match="larger than the 1077 training images"):
        jobs.start_training(ws, "bad", digits_id, RunConfig(batch_size=5000))
    assert len(ws.runs()) == before and runner.latest("bad") is None


def test_scoring_stores_the_engines_ranking(ws, trained):
    run_id = trained.result["run"]
    job = jobs.start_scoring(ws, "trainer", run_id, "sgd-last").wait(120)
    assert job.status == DONE, job.error
    stored = ws.scores(run_id, "sgd-last")
    direct = methods.rank(ws.open_run(run_id), "sgd-last")
    assert stored.sample_id.tolist() == direct.sample_id.tolist()
    np.testing.assert_allclose(stored.influence, direct.influence, rtol=1e-6, atol=1e-12)
    check = jobs.start_check(ws, "trainer", run_id, "sgd-last", n=4).wait(120)
    assert check.status == DONE, check.error
    trust = ws.score_info(run_id)["sgd-last"]["trust"]
    assert trust["n"] == 4 and -1 <= trust["tau"] <= 1


def test_scoring_with_a_baseline_stores_its_ranking_and_the_check_retrains_from_scratch(
        ws, trained):
    run_id = trained.result["run"]
    job = jobs.start_scoring(ws, "baseline", run_id, "tracin").wait(120)
    assert job.status == DONE, job.error
    assert job.phase == "rank" and job.done == job.total == 2  # one report per checkpoint
    assert words.progress_text(job).startswith("Ranking: 100% done, ")
    stored = ws.scores(run_id, "tracin")
    direct = methods.rank(ws.open_run(run_id), "tracin")
    assert stored.sample_id.tolist() == direct.sample_id.tolist()
    check = jobs.start_check(ws, "baseline", run_id, "tracin", n=3).wait(120)
    assert check.status == DONE, check.error
    assert check.done == check.total and ws.score_info(run_id)["tracin"]["trust"]["n"] == 3
    with pytest.raises(RunError, match="Confident learning does not estimate"):
        jobs.start_check(ws, "baseline", run_id, "confident-learning")
    with pytest.raises(RunError, match="unknown ranking 'random'"):
        jobs.start_scoring(ws, "baseline", run_id, "random")  # the cleaning control covers it


def test_a_cleaning_round_retrains_without_the_ids_and_a_random_control(ws, trained):
    run_id = trained.result["run"]
    base = ws.open_run(run_id)
    remove = base.train_ids[:7]
    job = jobs.start_cleaning(ws, "trainer", run_id, remove, "last", "sgd-last").wait(120)
    assert job.status == DONE, job.error
    rnd = ws.round(job.result["round"])
    assert rnd["status"] == DONE and rnd["removed"] == remove and rnd["mode"] == "last"
    cleaned = ws.run(rnd["cleaned"])
    assert set(cleaned["config"]["removed"]) == set(remove)
    verdict = rnd["verdict"]
    assert rnd["control"] is None and verdict["controls"] == cleaning.CONTROLS  # one vmap
    assert len(verdict["control_errors"]) == cleaning.CONTROLS and verdict["removed"] == 7
    assert cleaned["parent"] == run_id
    assert cleaned["metrics"]["train_size"] == base.metrics["train_size"] - 7
    direct = base.retrain(remove, "last")
    assert cleaned["metrics"]["val_loss"] == pytest.approx(direct.metrics["val_loss"], rel=1e-6)
    with pytest.raises(RunError, match="not training instances"):
        jobs.start_cleaning(ws, "trainer", run_id, ["no-such-id"])
    with pytest.raises(RunError, match="at least one image to remove or to fix"):
        jobs.start_cleaning(ws, "trainer", run_id, [])


def test_a_round_with_fixes_draws_its_random_fixes_from_the_stored_label_check(ws, trained,
                                                                              monkeypatch):
    """Page 3 kept the label check of the training images: the round's random fixes come from
    its flagged images, and the check is not computed again."""
    from influence import cleaning
    run_id = trained.result["run"]
    if "confident-learning" not in ws.score_info(run_id):
        assert jobs.start_scoring(ws, "trainer", run_id, "confident-learning").wait(
            120).status == DONE
    check = ws.scores(run_id, "confident-learning")
    flagged = jobs.stored_flags(ws, run_id)
    assert flagged == dict(zip(check.sample_id[check.flagged], check.suggested_label[
        check.flagged])) and flagged
    monkeypatch.setattr(cleaning, "label_check_flags", lambda run: pytest.fail("computed again"))
    fix = {sid: label for sid, label in list(flagged.items())[:3]}
    job = jobs.start_cleaning(ws, "trainer", run_id, [], "last", "sgd-last", controls=4,
                              fixes=fix).wait(120)
    assert job.status == DONE, job.error
    verdict = ws.round(job.result["round"])["verdict"]
    assert verdict["relabelled"] == 3 and len(verdict["control_errors"]) == 4
    assert jobs.stored_flags(ws, "no-such-run") is None


def test_the_estimate_is_of_the_right_size(ws, trained):
    run_id = trained.result["run"]
    guess = timing.estimate(ws.load_data(ws.run(run_id)["dataset"]), RunConfig(**FAST))
    assert guess["preset"] == "cnn-small" and guess["steps"] == ws.run(run_id)["metrics"]["steps"]
    disk = sum(f.stat().st_size for f in ws.run_folder(run_id).iterdir())
    assert 0.5 < guess["disk_bytes"] / disk < 2, (guess["disk_bytes"], disk)
    assert 0 < guess["seconds_score_last"] < guess["seconds_score"]


CRASH = """
import sys, time
from app.services import jobs
from app.services.store import Store
from influence.config import RunConfig
import datasets
ws = Store(sys.argv[1])
d = ws.add_dataset(datasets.load("digits"), "digits", "x")
job = jobs.start_training(ws, "x", d["id"], RunConfig(epochs=500))
print(job.result["run"], flush=True)
time.sleep(600)
"""


def test_a_killed_server_leaves_an_interrupted_run_and_nothing_half_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id.startswith("r-")
        time.sleep(1.0)  # mid-training
        assert Store(tmp_path).run(run_id)["status"] == RUNNING  # its owner is alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    reopened = Store(tmp_path)  # the next server start
    row = reopened.run(run_id)
    assert row["status"] == INTERRUPTED
    with pytest.raises(RunError):
        run_folder.load(reopened.run_folder(run_id))
    assert not list((tmp_path / "runs").glob(".*partial*"))


def test_two_sessions_scoring_at_once_both_finish_with_the_same_ranking(ws, trained):
    """torch's forward-mode AD is process-wide: without the engine's lock, two scorings in two
    threads break each other."""
    run_id = trained.result["run"]
    a = jobs.start_scoring(ws, "left", run_id, "sgd")
    b = jobs.start_scoring(ws, "right", run_id, "sgd")
    guess = timing.estimate(ws.load_data(ws.run(run_id)["dataset"]), RunConfig(**FAST))
    a.wait(180), b.wait(180)
    assert (a.status, b.status) == (DONE, DONE), (a.error, b.error)
    assert guess["seconds_score"] > 0
    direct = methods.rank(ws.open_run(run_id), "sgd")
    np.testing.assert_array_equal(ws.scores(run_id, "sgd").influence, direct.influence)
