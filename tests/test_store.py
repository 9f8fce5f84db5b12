"""The workspace store: data sets saved once, run and round records, sessions, restarts."""
import os
import sqlite3

import numpy as np
import pandas as pd
import pytest

import datasets
from app.services import store
from app.services.store import DONE, INTERRUPTED, RUNNING, Store
from datasets import flip_training_labels
from influence import runs
from influence.config import RunConfig, RunError


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


@pytest.fixture
def ws(tmp_path):
    return Store(tmp_path / "ws")


def test_workspace_comes_from_the_environment_or_defaults_to_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("INFLUENCE_WORKSPACE", str(tmp_path / "elsewhere"))
    assert Store().root == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere" / "store.sqlite").is_file()
    monkeypatch.delenv("INFLUENCE_WORKSPACE")
    assert store.workspace_root() == store.Path("workspace")


def test_an_unusable_workspace_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="cannot use the workspace folder"):
        Store(blocker)


def test_a_data_set_is_saved_once_and_reloads_identically(ws, digits):
    first = ws.add_dataset(digits, "digits", "s1")
    again = ws.add_dataset(digits, "digits again", "s2")
    assert first["id"] == again["id"] and len(ws.datasets()) == 1
    assert first["shape"] == [8, 8, 1] and first["n"] == 1797
    back = ws.load_data(first["id"])
    assert back.fingerprint() == digits.fingerprint()
    assert not any(p.name.startswith(".") for p in (ws.root / "datasets").iterdir())


def test_run_records_go_from_running_to_done(ws, digits):
    d = ws.add_dataset(digits, "digits", "s1")
    config = RunConfig(epochs=1)
    row = ws.new_run(d["id"], "train", config, "s1")
    assert row["status"] == RUNNING and row["config"]["epochs"] == 1
    done = ws.finish_run(row["id"], DONE, {"test_error": 0.1},
                         config=RunConfig(epochs=1, lr=0.2))
    assert done["status"] == DONE and done["metrics"] == {"test_error": 0.1}
    assert done["config"]["lr"] == 0.2 and done["finished"] >= done["created"]
    assert [r["id"] for r in ws.runs(d["id"])] == [row["id"]]
    with pytest.raises(RunError, match="only finished runs"):
        ws.open_run(ws.new_run(d["id"], "train", config, "s1")["id"])
    with pytest.raises(RunError, match="no run"):
        ws.run("r-nope")


def test_a_restart_marks_runs_of_a_dead_server_interrupted(ws, digits, monkeypatch):
    d = ws.add_dataset(digits, "digits", "s1")
    mine = ws.new_run(d["id"], "train", RunConfig(), "s1")
    dead = ws.new_run(d["id"], "train", RunConfig(), "s1")
    with sqlite3.connect(ws.root / "store.sqlite") as db:  # owned by a process that is gone
        db.execute("UPDATE runs SET owner = '999999999:0' WHERE id = ?", (dead["id"],))
    partial = ws.root / "runs" / f".{dead['id']}.partial-x"
    partial.mkdir()
    round_id = ws.new_round(d["id"], mine["id"], "sgd", "all", ["a"], dead["id"], None, "s1")
    assert Store(ws.root).run(dead["id"])["status"] == INTERRUPTED  # reopened: recovered
    assert Store(ws.root).run(mine["id"])["status"] == RUNNING  # still ours, still alive
    assert not partial.exists()
    assert ws.round(round_id)["status"] == INTERRUPTED
    monkeypatch.setattr(store, "BOOT", "a-new-process")  # same pid, new server: a restart
    assert ws.recover() == [mine["id"]]
    assert ws.run(mine["id"])["status"] == INTERRUPTED
    assert "server stopped" in ws.run(mine["id"])["error"]


def test_session_state_round_trips(ws):
    assert ws.session_state("abc") == {}
    ws.save_session_state("abc", {"run": "r-1", "ticks": {"r-1": ["x", "y"]}})
    assert Store(ws.root).session_state("abc")["ticks"] == {"r-1": ["x", "y"]}
    assert ws.session_state("other") == {}


def test_scores_trust_and_rounds_are_kept(ws, digits, tmp_path):
    d = ws.add_dataset(digits, "digits", "s1")
    row = ws.new_run(d["id"], "train", RunConfig(), "s1")
    ws.run_folder(row["id"]).mkdir(parents=True)
    frame = pd.DataFrame({"sample_id": ["digits-0001", "digits-0002"],
                          "label": ["01", "2"], "influence": [-0.5, 0.25]})
    ws.add_scores(row["id"], "sgd", frame, 1.5)
    back = ws.scores(row["id"], "sgd")
    assert back.sample_id.tolist() == frame.sample_id.tolist()
    assert back.influence.tolist() == [-0.5, 0.25]
    ws.set_trust(row["id"], "sgd", {"tau": 0.9, "n": 10})
    assert ws.score_info(row["id"])["sgd"]["trust"] == {"tau": 0.9, "n": 10}
    with pytest.raises(RunError, match="has not been scored"):
        ws.scores(row["id"], "sgd-last")
    r = ws.new_round(d["id"], row["id"], "sgd", "all", ["digits-0001"], "r-c", "r-r", "s1")
    ws.finish_round(r, DONE)
    assert ws.rounds(d["id"])[0]["removed"] == ["digits-0001"]
    assert ws.rounds(base="r-other") == []


def test_flipping_labels_touches_training_images_only_and_keeps_the_split(digits):
    noisy, flipped = flip_training_labels(digits, 0.1, 0.2, 0.2, seed=3)
    changed = {digits.ids[i] for i in np.flatnonzero(noisy.labels != digits.labels)}
    assert changed == set(flipped) and len(flipped) == round(0.1 * 1077)
    assert all(digits.classes[digits.labels[digits.ids.index(i)]] == c
               for i, c in flipped.items())  # the true class is remembered
    clean_run = runs.Run(RunConfig(epochs=1, seed=3), digits)
    noisy_run = runs.Run(RunConfig(epochs=1, seed=3), noisy)
    assert np.array_equal(clean_run.split.test, noisy_run.split.test)
    assert np.array_equal(clean_run.split.val, noisy_run.split.val)
    assert set(flipped) <= set(noisy_run.train_ids)
    again, _ = flip_training_labels(digits, 0.1, 0.2, 0.2, seed=3)
    assert again.fingerprint() == noisy.fingerprint()  # deterministic
    with pytest.raises(datasets.DataError, match="at most 50"):
        flip_training_labels(digits, 0.9, 0.2, 0.2, seed=3)


def test_a_flipped_set_survives_saving(ws, digits):
    noisy, flipped = flip_training_labels(digits, 0.05, 0.2, 0.2, seed=0)
    row = ws.add_dataset(noisy, "digits", "s1", flipped=flipped,
                         split={"val": 0.2, "test": 0.2, "seed": 0})
    assert row["flipped"] == flipped and row["split"]["seed"] == 0
    back = ws.load_data(row["id"])
    assert np.array_equal(back.labels, noisy.labels)
    assert back.split_labels().tolist() == digits.labels.tolist()
    assert os.path.isdir(ws.dataset_folder(row["id"]))
