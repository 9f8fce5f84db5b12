"""The command line end to end on digits, including its error cases. The CLI runs in this
process (influence.cli.main); only the tests of the process boundary (exit status, stderr of
`python -m influence`) start a process."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from influence import cli as influence_cli
from influence import run_folder

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    """influence.cli.main in this process, with what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = influence_cli.main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def cli_process(*args):
    """`python -m influence …` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "influence", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def last_json(proc):
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_line_error(proc):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    summary = last_json(cli("train", "--dataset", "digits", "--epochs", 3, "--batch-size", 32,
                            "--seed", 2, "--out", out))
    for key in ("train_size", "val_loss", "val_error", "test_error", "seconds"):
        assert key in summary
    assert summary["train_size"] == 1077
    return out, summary


def test_the_process_shows_progress_on_stderr_and_exits_non_zero_on_an_error(tmp_path):
    proc = cli_process("train", "--model", "logreg", "--epochs", 1, "--out", tmp_path / "r")
    last_json(proc)
    assert "train" in proc.stderr and "%" in proc.stderr
    proc = cli_process("score", tmp_path / "nothing-here")
    assert proc.returncode == 2 and "not a run folder" in one_line_error(proc)
    assert proc.stdout == ""


def test_score_writes_sorted_csv(run_dir, tmp_path):
    out, _ = run_dir
    last_json(cli("score", out))
    frame = pd.read_csv(out / "influence.csv")
    assert list(frame.columns) == ["sample_id", "label", "influence"]
    assert len(frame) == 1077 and frame.influence.is_monotonic_increasing
    last_json(cli("score", out, "--method", "sgd-last", "--out", tmp_path / "last.csv"))
    assert len(pd.read_csv(tmp_path / "last.csv")) == 1077


def test_retrain_with_empty_list_reproduces_the_run_exactly(run_dir, tmp_path):
    out, summary = run_dir
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for mode in ("all", "last"):
        again = last_json(cli("retrain", out, "--remove", empty, "--mode", mode,
                              "--out", tmp_path / f"again-{mode}"))
        assert again["val_loss"] == summary["val_loss"]
        assert again["test_error"] == summary["test_error"]


def test_retrain_without_harmful_instances(run_dir, tmp_path):
    out, summary = run_dir
    if not (out / "influence.csv").exists():
        last_json(cli("score", out))
    worst = pd.read_csv(out / "influence.csv").sample_id[:10]
    remove = tmp_path / "remove.txt"
    remove.write_text("\n".join(worst) + "\n")
    child = last_json(cli("retrain", out, "--remove", remove, "--out", tmp_path / "clean"))
    assert child["train_size"] == summary["train_size"] - 10


def test_unknown_id_is_refused_and_nothing_written(run_dir, tmp_path):
    out, _ = run_dir
    remove = tmp_path / "remove.txt"
    if not (out / "influence.csv").exists():
        last_json(cli("score", out))
    a_training_id = pd.read_csv(out / "influence.csv").sample_id[0]
    remove.write_text(f"{a_training_id}\nno-such-image\n")
    proc = cli("retrain", out, "--remove", remove, "--out", tmp_path / "never")
    assert "no-such-image" in one_line_error(proc)
    assert not (tmp_path / "never").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["remove.txt"]


def test_check_reports_tau(run_dir):
    out, _ = run_dir
    result = last_json(cli("check", out, "--n", 4, "--method", "sgd-last"))
    assert result["n"] == 4 and -1 <= result["tau"] <= 1 and 0 <= result["sign_agreement"] <= 1


@pytest.mark.parametrize("args,words", [
    (["train", "--dataset", "no-such-set", "--out", "{tmp}/x"], "no data set named"),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}", "--out", "{tmp}/x"], "DATA_DIR"),
    (["train", "--epochs", "0", "--out", "{tmp}/x"], "epochs"),
    (["train", "--lr", "-1", "--out", "{tmp}/x"], "learning rate"),
    (["train", "--batch-size", "5000", "--out", "{tmp}/x"], "batch size"),
    (["train", "--device", "cuda", "--out", "{tmp}/x"], "cuda"),
    (["score", "{tmp}"], "not a run folder"),
    (["retrain", "{tmp}", "--remove", "{tmp}/missing.txt", "--out", "{tmp}/x"], "removal list"),
])
def test_errors_are_one_line(tmp_path, args, words):
    import torch
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = cli(*[a.format(tmp=tmp_path) for a in args])
    assert words in one_line_error(proc)
    assert not (tmp_path / "x").exists()


def test_existing_output_is_never_overwritten(run_dir):
    out, _ = run_dir
    before = (out / "metrics.json").read_bytes()
    proc = cli("train", "--epochs", 1, "--out", out)
    assert "already exists" in one_line_error(proc)
    assert (out / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("damage", ["config", "weights", "foreign-weights"])
def test_damaged_run_folders_are_refused(run_dir, tmp_path, damage):
    import shutil
    out, _ = run_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    if damage == "config":
        (copy / "config.json").write_text("{not json")
    elif damage == "weights":
        (copy / "checkpoints.safetensors").write_bytes(b"\x80\x04garbage")
    else:
        from safetensors.torch import save_file
        import torch
        save_file({"w": torch.zeros(3)}, copy / "weights.safetensors")
    one_line_error(cli("score", copy))


def test_retrain_reports_mcnemar_and_random_controls(run_dir, tmp_path):
    out, summary = run_dir
    if not (out / "influence.csv").exists():
        last_json(cli("score", out))
    remove = tmp_path / "remove.txt"
    remove.write_text("\n".join(pd.read_csv(out / "influence.csv").sample_id[:10]))
    result = last_json(cli("retrain", out, "--remove", remove, "--mode", "last", "--controls", 5,
                           "--out", tmp_path / "clean"))
    assert result["controls"] == 5 and len(result["control_errors"]) == 5
    assert result["test_error_before"] == pytest.approx(summary["test_error"])
    assert result["test_error_after"] == pytest.approx(result["test_error"])
    changed = result["fixed"] - result["broken"]
    assert changed == round((summary["test_error"] - result["test_error"]) * result["n_test"])
    assert 0 < result["p_mcnemar"] <= 1 and 1 / 6 <= result["p_random"] <= 1
    used = {"prediction interval": result["p_random_interval"], "empirical": result["p_random"]}
    assert result["p_vs_random"] == pytest.approx(used[result["random_test"]])  # one round
    assert result["better"] == (result["better_than_before"] and result["better_than_random"])
    assert result["sentence"] and result["details"]
    none = last_json(cli("retrain", out, "--remove", remove, "--mode", "last", "--controls", 0,
                         "--out", tmp_path / "no-controls"))
    assert none["controls"] == 0 and none["p_random"] is None and not none["better_than_chance"]


def test_check_reports_singles_and_groups(run_dir):
    out, _ = run_dir
    result = last_json(cli("check", out, "--method", "sgd-last", "--n", 3, "--groups", 4))
    assert result["n"] == 3 and result["groups"] == 4 and -1 <= result["group_spearman"] <= 1
    assert "group and top-set shares" in one_line_error(cli("check", out, "--group-share", 0.9))


def test_score_refine_rescores_the_ends(run_dir, tmp_path):
    out, _ = run_dir
    result = last_json(cli("score", out, "--refine", 3, "--out", tmp_path / "refined.csv"))
    assert result["method"] == "sgd-refined"
    plain = pd.read_csv(out / "influence.csv") if (out / "influence.csv").exists() else \
        (last_json(cli("score", out)), pd.read_csv(out / "influence.csv"))[1]
    refined = pd.read_csv(tmp_path / "refined.csv").set_index("sample_id").influence
    changed = (refined.reindex(plain.sample_id).to_numpy() != plain.influence.to_numpy()).sum()
    assert changed == 6  # the 3 most harmful and the 3 most helpful, re-scored
    assert "--method sgd" in one_line_error(cli("score", out, "--method", "sgd-last",
                                                "--refine", 3))


# --- relabelling: score --relabel, retrain --fix ------------------------------------------------
def test_score_relabel_writes_the_best_label_of_every_image(run_dir, tmp_path):
    out, _ = run_dir
    if not (out / "influence.csv").exists():
        last_json(cli("score", out))
    result = last_json(cli("score", out, "--relabel", "--out", tmp_path / "influence.csv"))
    assert result["relabel"] == str(tmp_path / "relabel.csv")
    # the removal scores are those of a plain scoring
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "influence.csv"),
                                  pd.read_csv(out / "influence.csv"))
    fixes = pd.read_csv(tmp_path / "relabel.csv", dtype={"label": str, "best_label": str})
    classes = [str(c) for c in range(10)]
    assert list(fixes.columns) == ["sample_id", "label", "best_label", "effect_best",
                                   *(f"effect_to_{c}" for c in classes)]
    assert len(fixes) == 1077 and fixes.effect_best.is_monotonic_increasing
    assert (fixes.best_label != fixes.label).all()
    each = fixes[[f"effect_to_{c}" for c in classes]].to_numpy()
    own = np.array(classes)[None] == fixes.label.to_numpy()[:, None]
    assert (each[own] == 0).all()  # the label it has: no change
    np.testing.assert_array_equal(np.where(own, np.inf, each).min(1), fixes.effect_best)
    assert fixes.effect_best.iloc[0] < 0 and result["best_fixes"] == list(fixes.sample_id[:5])
    proc = cli("score", out, "--relabel", "--method", "tracin", "--out", tmp_path / "x.csv")
    assert "--relabel needs" in one_line_error(proc) and not (tmp_path / "x.csv").exists()


def test_retrain_fixes_labels_and_removes_images_together(run_dir, tmp_path):
    out, summary = run_dir
    run = run_folder.load(out)
    ids, labels = run.train_ids, run.objective.y.numpy()
    (tmp_path / "fix.csv").write_text("sample_id,new_label\n" + "".join(
        f"{ids[j]},{(labels[j] + 1) % 10}\n" for j in range(3)))
    (tmp_path / "remove.txt").write_text(f"{ids[3]}\n{ids[4]}\n")
    result = last_json(cli("retrain", out, "--fix", tmp_path / "fix.csv", "--remove",
                           tmp_path / "remove.txt", "--mode", "last", "--controls", 2,
                           "--out", tmp_path / "fixed"))
    assert result["train_size"] == summary["train_size"] - 2
    assert result["relabelled"] == 3 and result["removed"] == 2 and result["controls"] == 2
    config = json.loads((tmp_path / "fixed" / "config.json").read_text())
    assert config["fixes"] == {ids[j]: [int((labels[j] + 1) % 10), 2] for j in range(3)}
    assert config["removed"] == {ids[3]: 2, ids[4]: 2}
    only_fixes = last_json(cli("retrain", out, "--fix", tmp_path / "fix.csv", "--mode", "last",
                               "--controls", 0, "--out", tmp_path / "only-fixed"))
    assert only_fixes["train_size"] == summary["train_size"] and only_fixes["relabelled"] == 3


@pytest.mark.parametrize("fix,remove,words", [
    ("{train0},no-such-class", "", "unknown label"),
    ("{train0},{label0}", "", "given label"),
    ("{train0},{other0}", "{train0}", "both removed and fixed"),
    ("{val0},{other0}", "", "validation or test"),
    ("no-such-image,{other0}", "", "no-such-image"),
    ("{train0},{other0},extra", "", "not `sample_id,new_label`"),
    ("", None, "give the images to remove"),
])
def test_bad_fixes_are_one_line_errors_and_write_nothing(run_dir, tmp_path, fix, remove, words):
    out, _ = run_dir
    run = run_folder.load(out)
    given = run.data.labels[run.split.train[0]]
    names = {"train0": run.train_ids[0], "val0": run.data.ids[run.split.val[0]],
             "label0": run.data.classes[given],
             "other0": run.data.classes[(given + 1) % len(run.data.classes)]}
    args = []
    if fix:
        (tmp_path / "fix.csv").write_text(fix.format(**names) + "\n")
        args += ["--fix", tmp_path / "fix.csv"]
    if remove is not None:
        (tmp_path / "remove.txt").write_text(remove.format(**names) + "\n")
        args += ["--remove", tmp_path / "remove.txt"]
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli("retrain", out, *args, "--out", tmp_path / "never")
    assert words in one_line_error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_curve_writes_the_curve_and_prints_the_suggestion(run_dir, tmp_path):
    out, _ = run_dir
    result = last_json(cli("curve", out, "--controls", 2, "--out", tmp_path / "curve.csv"))
    frame = pd.read_csv(tmp_path / "curve.csv")
    ks = [0, 5, 10, 20, 50, 100, 200, 500]
    assert frame[frame.kind == "top"].k.tolist() == ks
    assert len(frame) == len(ks) + 2 * (len(ks) - 1)
    assert {"selection_loss", "selection_error", "query_loss"} <= set(frame.columns)
    assert result["method"] == "sgd-last" and result["mode"] == "last"
    assert result["suggested_k"] in ks and result["n_selection"] == 180
    assert result["sentence"] and (result["suggested_k"] > 0) == result["helps"]
    last_json(cli("score", out, "--method", "sgd-last", "--out", tmp_path / "s.csv"))
    again = last_json(cli("curve", out, "--ranking", tmp_path / "s.csv", "--controls", 2,
                          "--out", tmp_path / "again.csv"))
    assert again["suggested_k"] == result["suggested_k"]  # the same ranking, the same curve
    assert pd.read_csv(tmp_path / "again.csv").equals(frame)


@pytest.mark.parametrize("args, words", [
    (["--controls", "-1"], "random controls"),
    (["--ranking", "no-such.csv"], "missing or damaged"),
])
def test_bad_curve_input_is_one_line_and_writes_nothing(run_dir, tmp_path, args, words):
    out, _ = run_dir
    proc = cli("curve", out, "--out", tmp_path / "c.csv", *args)
    assert words in one_line_error(proc) and not (tmp_path / "c.csv").exists()


def test_curve_refuses_a_run_without_selection_images(tmp_path):
    out = tmp_path / "run"
    last_json(cli("train", "--model", "logreg", "--epochs", 1, "--lr", 0.5,
                  "--selection-fraction", 0, "--out", out))
    proc = cli("curve", out, "--force")
    assert "no selection images" in one_line_error(proc)
    assert not (out / "curve.csv").exists()


def test_explain_writes_the_harmful_and_helpful_images_of_each_test_image(run_dir, tmp_path):
    out, _ = run_dir
    run = run_folder.load(out)
    test_ids = [run.data.ids[i] for i in run.split.test[:2]]
    (tmp_path / "ids.txt").write_text("\n".join(test_ids) + "\n")
    result = last_json(cli("explain", out, "--test-ids", tmp_path / "ids.txt", "--method",
                           "sgd-last", "--top", 3, "--out", tmp_path / "why.csv"))
    frame = pd.read_csv(tmp_path / "why.csv", dtype={"test_id": str, "sample_id": str})
    assert result["test_images"] == 2 and result["rows"] == len(frame) == 12
    assert list(frame.columns) == ["test_id", "side", "rank", "sample_id", "label", "score"]
    assert set(frame.test_id) == set(test_ids) and set(frame.sample_id) <= set(run.train_ids)
    first = frame[(frame.test_id == test_ids[0]) & (frame.side == "harmful")]
    single = run.influence(run.test_loss_fn(test_ids[0]), last_epoch_only=True)
    np.testing.assert_allclose(first.score, np.sort(single)[:3], rtol=1e-5)
    assert (frame[frame.side == "helpful"].score > 0).all()


@pytest.mark.parametrize("ids,words", [
    ("no-such-image", "not an image of this data set"),
    ("{train0}", "is a training image"),
    ("{test0}\n{val0}", "is a validation image"),
    ("many", "give 1 to 1000"),
    ("", "give 1 to 1000"),
])
def test_bad_test_ids_are_one_line_errors_and_write_nothing(run_dir, tmp_path, ids, words):
    out, _ = run_dir
    run = run_folder.load(out)
    if ids == "many":
        ids = "\n".join(run.data.ids[:1001])
    names = {"train0": run.train_ids[0], "val0": run.data.ids[run.split.val[0]],
             "test0": run.data.ids[run.split.test[0]]}
    (tmp_path / "ids.txt").write_text(ids.format(**names) + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli("explain", out, "--test-ids", tmp_path / "ids.txt", "--out", tmp_path / "x.csv")
    assert words in one_line_error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not (out / "explain.csv").exists()
