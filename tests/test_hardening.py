"""Issue 5 (hardening), where the user meets each case: the CLI answers one line on stderr with a
non-zero exit, the app a plain st.error (never a traceback); nothing is written outside the
workspace and nothing stored before is changed. Parsing itself is tested in test_upload.py and
test_upload_fuzz.py, the engine in test_runs.py, restarts in test_store.py and test_jobs.py.
Every bad file is made here."""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import datasets
from datasets import limits
from app.services import jobs, runner
from app.services.store import DONE, FAILED, INTERRUPTED, Store
from helpers import (bomb_png, button, central_directory_patch, errors, make_zip, new_app, ok, png,
                     score, session_of, set_lr, text, trained_in_app, two_classes, wait_for_job,
                     zip_bytes)
from influence import cli, run_folder
from influence.config import RunConfig, RunError

ROOT = Path(__file__).resolve().parents[1]
LOGREG = dict(model="logreg", epochs=1)  # the quickest real training on digits


def run_cli(capsys, *args) -> tuple[int, str]:
    """The CLI in this process: its exit status and its error, asserted to stand alone on the
    last line a terminal shows (splitlines also splits at the '\r' of progress bars)."""
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if code != 0:
        assert lines[-1].startswith("error: ") and err.count("error: ") == 1, err
        assert "Traceback" not in err
    return code, lines[-1] if lines else ""


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --- bad uploads: the same files through the CLI and the app --------------------------------


def labels_csv(text: str | bytes, images=("1.png", "2.png", "3.png", "4.png")) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    return zip_bytes({"labels.csv": raw, **{name: png() for name in images}})


BAD_UPLOADS = {  # name: (the bytes of a .zip upload, words the message must hold)
    "traversal": (zip_bytes(two_classes(**{"../evil.png": png()})), ["'..'"]),
    "absolute path": (zip_bytes(two_classes(**{"/tmp/evil.png": png()})), ["absolute"]),
    "symlink": (zip_bytes(two_classes(**{"a/link.png": (b"/etc/passwd", 0o120777 << 16)})),
                ["symbolic link"]),
    "zip bomb": (zip_bytes(two_classes(**{"a/bomb.png": bytes(20 * limits.MiB)})),
                 ["zip bomb"]),
    "encrypted": (central_directory_patch(zip_bytes(two_classes()), 8, "<H", 0x1),
                  ["encrypted"]),
    "truncated": (zip_bytes(two_classes())[:300], ["truncated"]),
    "not a zip": (b"just text with a .zip name\n", ["not a zip archive"]),
    "empty file": (b"", ["empty"]),
    "empty archive": (zip_bytes({}), ["empty zip archive"]),
    "image bomb": (zip_bytes(two_classes(**{"a/bomb.png": bomb_png(100_000, 100_000)})),
                   ["decompression bomb"]),
    "only corrupt images in a class": (
        zip_bytes({"a/0.png": png(), "a/1.png": png(), "b/0.png": b"junk", "b/1.png": b"junk"}),
        ["class 'b'", "could not be read"]),
    "labels.csv names a missing file": (
        labels_csv("filename,label\n1.png,a\n2.png,a\n3.png,b\n9.png,b\n"), ["9.png"]),
    "labels.csv duplicate": (
        labels_csv("filename,label\n1.png,a\n2.png,a\n3.png,b\n1.png,b\n"), ["twice"]),
    "labels.csv empty label": (
        labels_csv("filename,label\n1.png,a\n2.png,\n3.png,b\n4.png,b\n"), ["empty label"]),
    "labels.csv not utf-8": (
        labels_csv("filename,label\n1.png,caf\xe9\n2.png,caf\xe9\n3.png,b\n4.png,b\n"
                   .encode("latin-1")), ["not utf-8"]),
    "labels.csv unknown columns": (labels_csv("image,class\n1.png,a\n"), ["filename,label"]),
    "no labels.csv, no class folders": (zip_bytes({"1.png": png(), "2.png": png()}),
                                        ["labels.csv"]),
    "one class": (zip_bytes({"cat/1.png": png(), "cat/2.png": png()}), ["only one class"]),
    "a class with one image": (zip_bytes(two_classes(**{"c/0.png": png()})), ["at least 2"]),
    "too many classes": (
        zip_bytes({f"c{k:03d}/{i}.png": png() for k in range(limits.MAX_CLASSES + 1)
                   for i in (0, 1)}), [f"limit of {limits.MAX_CLASSES}"]),
    "name too long": (zip_bytes(two_classes(**{"a/" + "y" * 300 + ".png": png()})),
                      ["longer than 255"]),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_cli_refuses_each_bad_upload_in_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                     capsys, case):
    content, words = BAD_UPLOADS[case]
    (tmp_path / "upload.zip").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "train", "--dataset", tmp_path / "upload.zip",
                         "--out", tmp_path / "run")
    assert code == cli.EXIT_ERROR
    assert all(w.lower() in line.lower() for w in words), line
    assert os.listdir(tmp_path) == ["upload.zip"]  # no run, nothing extracted anywhere


def test_app_refuses_each_bad_upload_with_a_plain_message_and_keeps_the_data(workspace):
    at = new_app()
    before = at.session_state["app"]["dataset"]
    saved = files_under(workspace / "datasets")
    at.radio(key="data_source").set_value("Upload a ZIP").run()
    for case, (content, words) in BAD_UPLOADS.items():
        at.file_uploader[0].set_value((f"{case}.zip", content, "application/zip"))
        button(at.run(), "Use this upload").click().run()
        assert not at.exception, (case, [e.value for e in at.exception])
        message = errors(at)
        assert message.startswith("This upload cannot be used"), (case, message)
        assert all(w.lower() in message.lower() for w in words), (case, message)
        assert at.session_state["app"]["dataset"] == before, case
    assert files_under(workspace / "datasets") == saved  # no data set added or changed
    assert len(Store().datasets()) == 1


def test_app_takes_mixed_modes_and_odd_names(workspace):
    """Mixed modes (L, RGB, RGBA, P, 16-bit) and names with spaces, unicode and 200 characters."""
    sixteen = io.BytesIO()
    Image.fromarray(np.full((8, 8), 30_000, np.uint16)).save(sixteen, "PNG")
    members = {"chat noir/été 1.png": png(mode="RGB", color=(9, 9, 9)),
               "chat noir/猫 2.png": png(mode="RGBA", color=(1, 2, 3, 128)),
               "b/" + "x" * 200 + ".png": png(mode="P", color=4), "b/16 bit.png": sixteen.getvalue(),
               "b/grey.png": png()}
    at = new_app()
    at.radio(key="data_source").set_value("Upload a ZIP").run()
    at.file_uploader[0].set_value(("odd.zip", zip_bytes(members), "application/zip"))
    button(at.run(), "Use this upload").click().run()
    ok(at)
    assert "5 images in 2 classes" in text(at) and "colour" in text(at)
    data = Store().load_data(at.session_state["app"]["dataset"])
    assert data.classes == ["b", "chat noir"] and data.shape == (8, 8, 3)


# --- settings out of range ------------------------------------------------------------------


@pytest.mark.parametrize("args,words", [
    (["--epochs", 0], "epochs"), (["--epochs", -3], "epochs"),
    (["--lr", 0], "learning rate"), (["--lr", -0.1], "learning rate"),
    (["--lr", "nan"], "learning rate"), (["--batch-size", 0], "batch size"),
    (["--batch-size", 1078], "larger than the 1077 training images"), (["--l2", -1], "L2"),
])
def test_cli_refuses_settings_out_of_range(tmp_path, capsys, args, words):
    code, line = run_cli(capsys, "train", *args, "--out", tmp_path / "run")
    assert code == cli.EXIT_ERROR and words in line
    assert not (tmp_path / "run").exists()


def test_app_settings_out_of_range(workspace):
    """The widgets stop 0 epochs and a learning rate ≤ 0 (the browser shows Streamlit's
    'Number is below the allowed range' there); a batch larger than the training set is an
    error that names both numbers; and the jobs layer refuses such settings whatever asks."""
    at = new_app().switch_page("views/train.py").run()
    at.number_input(key="epochs").set_value(0).run()
    set_lr(at, "cnn-small", -1.0).run()
    ok(at)
    assert at.number_input(key="epochs").value in (None, 1)  # never 0; empty means auto
    assert at.number_input(key="lr-cnn-small").value == pytest.approx(0.0001)
    at.number_input(key="batch").set_value(4096).run()
    ok(at)
    assert "These settings cannot be used: batch size 4096 is larger than the 1077 training " \
           "images" in errors(at)
    assert button(at, "Start training").disabled
    store, dataset = Store(), at.session_state["app"]["dataset"]
    for bad in (dict(epochs=0), dict(lr=-0.5), dict(batch_size=4096)):
        with pytest.raises(RunError):
            jobs.start_training(store, "s", dataset, RunConfig(**bad))
    assert store.runs() == []


# --- tampered and foreign run folders -------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "run"
    run_folder.train_new(RunConfig(dataset="digits", epochs=2, model="logreg"), out)
    return out


class Payload:
    """Unpickling this creates the file it names: proof that a loader unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def edit_json(name: str, **changes):
    def edit(folder: Path):
        raw = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**raw, **changes}))
    return edit


def write(name: str, content: bytes | str):
    def edit(folder: Path):
        target = folder / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return edit


def truncate(name: str):
    def edit(folder: Path):
        (folder / name).write_bytes((folder / name).read_bytes()[:100])
    return edit


def delete(name: str):
    return lambda folder: (folder / name).unlink()


def pickled(name: str):
    def edit(folder: Path):
        torch.save({"w": Payload(folder.parent / "UNPICKLED")}, folder / name)
    return edit


def weights_as(dtype=None, shapes=False):
    def edit(folder: Path):
        weights = load_file(folder / "weights.safetensors")
        save_file({k: (torch.zeros(3) if shapes else v.to(dtype)) for k, v in weights.items()},
                  folder / "weights.safetensors")
    return edit


def reversed_order(folder: Path):
    schedule = load_file(folder / "schedule.safetensors")
    save_file({**schedule, "order": schedule["order"].flip(-1).contiguous()},
              folder / "schedule.safetensors")


TAMPERED = {  # name: (how the folder is changed, words of the refusal)
    "no config.json": (delete("config.json"), "not a run folder"),
    "config.json not JSON": (write("config.json", "{not json"), "config.json is damaged"),
    "config.json of another tool": (write("config.json", '{"model_type": "bert"}'),
                                    "not written by this tool"),
    "config.json a list": (write("config.json", "[1, 2]"), "not written by this tool"),
    "a setting of the wrong type": (edit_json("config.json", epochs="2"),
                                    "epochs has the wrong type"),
    "removed ids of the wrong type": (edit_json("config.json", removed=["digits-0001"]),
                                      "removed has the wrong type"),
    "another data set": (edit_json("config.json", fingerprint="0" * 16), "has changed since"),
    "no metrics.json (interrupted)": (delete("metrics.json"), "incomplete"),
    "metrics.json not JSON": (write("metrics.json", b"\xff\xfe"), "metrics.json is damaged"),
    "no weights file": (delete("weights.safetensors"), "missing or damaged"),
    "no checkpoints file": (delete("checkpoints.safetensors"), "missing or damaged"),
    "truncated weights": (truncate("weights.safetensors"), "missing or damaged"),
    "a pickle as weights": (pickled("weights.safetensors"), "missing or damaged"),
    "a pickle as checkpoints": (pickled("checkpoints.safetensors"), "missing or damaged"),
    "foreign weights (other shapes)": (weights_as(shapes=True), "do not fit"),
    "foreign weights (other precision)": (weights_as(torch.float64), "do not fit"),
    "another batch order": (reversed_order, "batch order does not match"),
}

_UNPICKLING = []


def _audit(event, args):
    if event == "pickle.find_class":
        _UNPICKLING.append(args)


sys.addaudithook(_audit)


@contextmanager
def never_unpickles():
    """Python's audit hook sees every class a pickle asks for: none may be asked for."""
    before = len(_UNPICKLING)
    yield
    assert _UNPICKLING[before:] == [], f"something was unpickled: {_UNPICKLING[before:]}"


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_run_folders_are_refused_and_never_unpickled(saved_run, tmp_path, capsys,
                                                              case):
    tamper, words = TAMPERED[case]
    folder = tmp_path / "run"
    shutil.copytree(saved_run, folder)
    tamper(folder)
    before = files_under(folder)
    with never_unpickles():
        with pytest.raises(RunError, match=words):
            run_folder.load(folder)
        code, line = run_cli(capsys, "score", folder)
    assert code == cli.EXIT_ERROR and words in line
    assert files_under(folder) == before  # refused without writing anything
    assert not (tmp_path / "UNPICKLED").exists()


def test_app_refuses_a_tampered_run_and_damaged_results_and_says_why(workspace):
    at = trained_in_app()
    at = score(at, "sgd-last")
    assert "Ranked training images" in text(ok(at.run()))
    folder = Store().run_folder(at.session_state["app"]["run"])

    good = (folder / "predictions.csv").read_bytes()
    for damage in ("sample_id,oops\n1,2\n", "sample_id,part,label,predicted,confidence\n"
                   "digits-0001,train,x,y,z\n", None):
        if damage is None:
            (folder / "predictions.csv").unlink()
        else:
            (folder / "predictions.csv").write_text(damage)
        ok(at.run())
        assert "predictions.csv" in errors(at) and "damaged" in errors(at), damage
    (folder / "predictions.csv").write_bytes(good)
    assert "Ranked training images" in text(ok(at.run()))

    # (Streamlit's own caches unpickle their results here, so the proof is the payload's file)
    pickled("weights.safetensors")(folder)  # unpickling it would create runs/UNPICKLED
    at.radio(key="score_method").set_value("sgd")  # scoring reopens the run: refused
    button(at.run(), "Compute influence").click().run()
    assert wait_for_job(at).status == FAILED
    ok(at.run())
    assert "a weights file is missing or damaged" in errors(at)
    at.switch_page("views/train.py").run()  # and so does opening it again
    button(at, "Open this model").click().run()
    ok(at)
    assert "This model cannot be opened" in errors(at) and "damaged" in errors(at)
    assert not (folder.parent / "UNPICKLED").exists()


# --- divergence -----------------------------------------------------------------------------

DIVERGES = dict(model="logreg", epochs=2, lr=5.0, l2=10.0)  # (1 − η·α) = −49 each step


def test_divergence_stops_the_job_says_why_and_keeps_earlier_runs(tmp_path):
    ws = Store(tmp_path / "ws")
    dataset = ws.add_dataset(datasets.load("digits"), "digits", "s")["id"]
    good = jobs.start_training(ws, "s", dataset, RunConfig(**LOGREG)).wait(120)
    assert good.status == DONE, good.error
    earlier = files_under(ws.root / "runs")
    bad = jobs.start_training(ws, "s", dataset, RunConfig(**DIVERGES)).wait(120)
    assert bad.status == FAILED and bad.suggested_lr == pytest.approx(0.5)
    assert "loss became" in bad.error and "try 0.5" in bad.error
    assert ws.run(bad.result["run"])["status"] == FAILED
    assert not ws.run_folder(bad.result["run"]).exists()  # nothing of it kept
    assert files_under(ws.root / "runs") == earlier  # the earlier run is untouched ...
    assert ws.run(good.result["run"])["status"] == DONE
    ws.open_run(good.result["run"])  # ... and still opens


def test_cli_divergence_is_one_line_and_writes_no_run(tmp_path, capsys):
    args = [f"--{k}={v}" for k, v in DIVERGES.items()]
    code, line = run_cli(capsys, "train", *args, "--out", tmp_path / "run")
    assert code == cli.EXIT_ERROR and "diverged" in line and "try 0.5" in line
    assert os.listdir(tmp_path) == []


def test_app_divergence_keeps_the_earlier_model_current(workspace):
    at = trained_in_app()
    good = at.session_state["app"]["run"]
    at.number_input(key="epochs").set_value(2)
    set_lr(at, "logreg", 5.0)
    at.number_input(key="l2").set_value(10.0)
    button(at.run(), "Start training").click().run()
    assert wait_for_job(at).status == FAILED
    ok(at.run())
    assert "Training failed: training stopped at step" in errors(at)
    assert "try 0.5" in errors(at)
    assert at.session_state["app"]["run"] == good  # the earlier model is current again
    assert Store().run(good)["status"] == DONE


# --- a server killed while it writes a run --------------------------------------------------

KILLED_WHILE_WRITING = """
import os, signal, sys
import datasets
from app.services import jobs
from app.services.store import Store
from influence import cli, run_folder
from influence.config import RunConfig

real = run_folder.save_file
def write_then_die(tensors, path):  # the process is killed in the middle of writing the run
    real(tensors, path)
    print(path, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

run_folder.save_file = write_then_die
where, how = sys.argv[1], sys.argv[2]
if how == "cli":
    cli.main(["train", "--model", "logreg", "--epochs", "1", "--out", where + "/run"])
else:
    ws = Store(where)
    d = ws.add_dataset(datasets.load("digits"), "digits", "x")
    job = jobs.start_training(ws, "x", d["id"], RunConfig(model="logreg", epochs=1))
    print(job.result["run"], flush=True)
    job.wait(300)
"""


@pytest.mark.parametrize("how", ["cli", "app"])
def test_killed_while_writing_leaves_no_run_that_looks_complete(tmp_path, how):
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, str(tmp_path), how],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    written = Path(proc.stdout.split()[-1])  # the one file written before the kill
    assert written.is_file() and ".partial-" in written.parent.name
    if how == "cli":
        with pytest.raises(RunError, match="not a run folder"):
            run_folder.load(tmp_path / "run")  # no run under its name; the partial is hidden
        return
    run_id = proc.stdout.split()[0]
    assert not (tmp_path / "runs" / run_id).exists()
    restarted = Store(tmp_path)  # the next server start
    assert restarted.run(run_id)["status"] == INTERRUPTED
    assert not written.parent.exists()  # the half-written folder is cleaned away


# --- disk full, no write permission ---------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_app_on_a_workspace_that_cannot_be_created(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")  # (root ignores chmod: a file blocks)
    monkeypatch.setenv("INFLUENCE_WORKSPACE", str(tmp_path / "a-file" / "workspace"))
    at = ok(new_app())
    assert "cannot use the workspace folder" in errors(at)
    assert "INFLUENCE_WORKSPACE" in errors(at)


def test_app_when_the_disk_is_full_at_first_launch(workspace, monkeypatch):
    monkeypatch.setattr(np, "save", no_space)  # saving the built-in digits fails
    at = ok(new_app())
    assert "No space left on device" in errors(at) and "disk space" in errors(at)
    assert not [p for p in (workspace / "datasets").iterdir()]  # no half-saved data set


def test_app_when_the_disk_fills_while_saving_an_upload(workspace, monkeypatch):
    at = new_app()
    before, saved = at.session_state["app"]["dataset"], files_under(workspace / "datasets")
    at.radio(key="data_source").set_value("Upload a ZIP").run()
    at.file_uploader[0].set_value(("pets.zip", make_zip(), "application/zip"))
    monkeypatch.setattr(np, "save", no_space)
    button(at.run(), "Use this upload").click().run()
    ok(at)
    assert "This upload cannot be used: cannot save the data set into the workspace" in \
           errors(at) and "No space left on device" in errors(at)
    assert at.session_state["app"]["dataset"] == before
    assert files_under(workspace / "datasets") == saved


def test_app_when_the_disk_fills_while_saving_a_run(workspace, monkeypatch):
    at = trained_in_app()
    good = at.session_state["app"]["run"]
    earlier = files_under(workspace / "runs")
    monkeypatch.setattr(run_folder, "save_file", no_space)
    button(at, "Start training").click().run()
    job = wait_for_job(at)
    assert job.status == FAILED
    ok(at.run())
    assert "Training failed: cannot write the run" in errors(at)
    assert "No space left on device" in errors(at) and "disk space" in errors(at)
    assert files_under(workspace / "runs") == earlier  # nothing half-written, nothing changed
    assert at.session_state["app"]["run"] == good


def test_disk_full_while_scoring_keeps_the_earlier_scores(tmp_path, monkeypatch):
    ws = Store(tmp_path / "ws")
    dataset = ws.add_dataset(datasets.load("digits"), "digits", "s")["id"]
    run_id = jobs.start_training(ws, "s", dataset, RunConfig(**LOGREG)).wait(120) \
        .result["run"]
    assert jobs.start_scoring(ws, "s", run_id, "sgd-last").wait(120).status == DONE
    before = files_under(ws.run_folder(run_id))
    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    job = jobs.start_scoring(ws, "s", run_id, "sgd").wait(120)
    assert job.status == FAILED
    assert "No space left on device" in job.error and "disk space" in job.error
    assert files_under(ws.run_folder(run_id)) == before  # no partial file, nothing changed
    assert set(ws.score_info(run_id)) == {"sgd-last"}


@contextmanager
def full_database(monkeypatch):
    """SQLite's own 'database or disk is full': no page may be added to store.sqlite."""
    real = Store._db

    @contextmanager
    def capped(self):
        with real(self) as db:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
            yield db

    monkeypatch.setattr(Store, "_db", capped)
    yield


def test_store_errors_are_clear_when_the_database_is_full_or_damaged(tmp_path, monkeypatch):
    ws = Store(tmp_path / "ws")
    ws.save_session_state("s", {"kept": True})
    with full_database(monkeypatch):
        with pytest.raises(RunError, match="database or disk is full. Check that the disk"):
            for i in range(50):
                ws.save_session_state(f"s{i}", {"big": "x" * 10_000})
    assert Store(tmp_path / "ws").session_state("s") == {"kept": True}  # nothing lost
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "store.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(RunError, match="cannot read or write the workspace database"):
        Store(tmp_path / "bad")


def test_app_when_the_database_cannot_be_written(workspace, monkeypatch):
    """store.sqlite read-only (as root, chmod cannot show it: SQLite's query_only does)."""
    at = new_app().switch_page("views/train.py").run()
    at.selectbox(key="model_choice").set_value("logreg").run()
    real = Store._db

    @contextmanager
    def read_only(self):
        with real(self) as db:
            db.execute("PRAGMA query_only = 1")
            yield db

    monkeypatch.setattr(Store, "_db", read_only)
    button(at, "Start training").click().run()
    ok(at)
    assert "cannot read or write the workspace database" in errors(at)
    assert "the folder is writable" in errors(at)
    monkeypatch.undo()
    assert runner.latest(session_of(at)) is None and Store().runs() == []


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    code, line = run_cli(capsys, "train", "--model", "logreg", "--epochs", 1,
                         "--out", tmp_path / "a-file" / "run")
    assert code == cli.EXIT_ERROR and "cannot write the run" in line
    assert os.listdir(tmp_path) == ["a-file"]


# --- two sessions: uploading while another one trains --------------------------------------


def image_zip(n_per_class: int = 12) -> bytes:
    rng = np.random.default_rng(0)
    members = {}
    for c, name in enumerate(("dark", "light")):
        for i in range(n_per_class):
            pixels = rng.integers(0, 100, (8, 8)) + 120 * c
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
            members[f"{name}/{i}.png"] = buffer.getvalue()
    return zip_bytes(members)


def test_one_session_uploads_and_trains_while_another_trains(workspace, monkeypatch):
    a, b = new_app(), new_app()
    held, report = threading.Event(), runner.Job.report

    def hold_a(job, progress, phase=None):  # session a's training waits at its first step
        if job.session == session_of(a):
            held.wait(120)
        return report(job, progress, phase)

    monkeypatch.setattr(runner.Job, "report", hold_a)
    a.switch_page("views/train.py").run()
    a.number_input(key="epochs").set_value(3).run()
    button(a, "Start training").click().run()
    training = runner.active(session_of(a))
    assert training is not None

    b.radio(key="data_source").set_value("Upload a ZIP").run()
    b.file_uploader[0].set_value(("shades.zip", image_zip(), "application/zip"))
    button(b.run(), "Use this upload").click().run()
    ok(b)
    assert training.running, "the upload should have happened while the other session trained"
    assert "24 images in 2 classes" in text(b)
    b.switch_page("views/train.py").run()
    b.selectbox(key="model_choice").set_value("logreg").run()
    b.number_input(key="batch").set_value(4).run()
    button(b, "Start training").click().run()
    b_job = wait_for_job(b)
    assert training.running and training.done == 0  # a was mid-training all along
    held.set()
    a_job = wait_for_job(a)
    assert (a_job.status, b_job.status) == (DONE, DONE), (a_job.error, b_job.error)
    ok(a.run()), ok(b.run())
    store = Store()
    run_a, run_b = (store.run(x.session_state["app"]["run"]) for x in (a, b))
    assert run_a["dataset"] == a.session_state["app"]["dataset"] != run_b["dataset"]
    assert run_b["dataset"] == b.session_state["app"]["dataset"]
    assert run_a["metrics"]["train_size"] == 1077 and run_b["metrics"]["train_size"] < 24
    assert run_a["metrics"]["learned"] and run_b["metrics"]["learned"]

    for at in (a, b):  # both score at once; each sees its own ranking and ticks
        at.switch_page("views/harmful.py").run()
        at.radio(key="score_method").set_value("sgd-last")
        button(at.run(), "Compute influence").click().run()
    for at in (a, b):
        assert wait_for_job(at).status == DONE
        ok(at.run())
    button(b, "Tick top 10").click().run()
    ok(a.run())
    assert "**Ticked:** 0 images" in text(a) and "**Ticked:** 10 images" in text(ok(b))
    assert set(store.scores(run_a["id"], "sgd-last").sample_id) <= set(datasets.load("digits").ids)
    assert all(i.startswith(("dark/", "light/"))
               for i in store.scores(run_b["id"], "sgd-last").sample_id)
    assert [j.kind for j in runner.jobs_of(session_of(a))] == ["score", "train"]
    assert [j.kind for j in runner.jobs_of(session_of(b))] == ["score", "train"]
    assert runner.jobs_of(session_of(a))[1] is a_job and runner.jobs_of(session_of(b))[1] is b_job
