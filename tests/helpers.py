"""Helpers shared by several test modules (no test module imports another)."""
from __future__ import annotations

import io
import os
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from torch import nn
from streamlit.testing.v1 import AppTest

from app.services import runner
from app.services.store import DONE
from datasets import DataError
from datasets.upload import load_upload
from influence.sgd import Objective, SGDConfig, initial_params, make_schedule

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 60
QUICK_MODEL = "logreg"  # the quickest preset that still trains for real (on the digits)


# --- the app under Streamlit's AppTest ---------------------------------------------------------
def new_app(session: str | None = None) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    if session:
        at.query_params["s"] = session
    return at.run()


def text(at: AppTest) -> str:
    """Everything the page says (main area and sidebar), as one string."""
    parts = [e.value for kind in ("markdown", "info", "success", "warning", "error", "caption",
                                  "title", "subheader")
             for e in getattr(at, kind)]
    parts += [e.value for e in at.sidebar.markdown]
    return "\n".join(str(p) for p in parts)


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label.startswith(label)]
    assert found, f"no button {label!r} in {[b.label for b in at.button]}"
    return found[0]


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def session_of(at: AppTest) -> str:
    return at.session_state["sid"]


def wait_for_job(at: AppTest) -> runner.Job:
    job = runner.latest(session_of(at))
    job.wait(120)
    assert not job.running
    return job


def train(at: AppTest, epochs: int = 2, lr: float | None = None, l2: float | None = None,
          model: str = QUICK_MODEL):
    """Page 2: train with these settings; returns the app and the finished job."""
    at.switch_page("views/train.py").run()
    at.selectbox(key="model_choice").set_value(model).run()
    at.number_input(key="epochs").set_value(epochs)
    if lr is not None:
        set_lr(at, model, lr)
    if l2 is not None:
        at.number_input(key="l2").set_value(l2)
    button(at.run(), "Start training").click().run()
    job = wait_for_job(at)
    ok(at.run())
    return at, job


def set_lr(at: AppTest, model: str, lr: float) -> AppTest:
    """Page 2: switch the learning-rate probe off and give the rate."""
    at.toggle(key="auto_lr").set_value(False).run()
    at.number_input(key=f"lr-{model}").set_value(lr)
    return at


def trained_in_app() -> AppTest:
    """A new app session with the quickest real model (one epoch) trained on page 2."""
    at, job = train(new_app(), epochs=1)
    assert job.status == DONE, job.error
    return at


def score(at: AppTest, method: str) -> AppTest:
    """Page 3: compute a ranking (its "Compute influence" or "Compute this ranking" button)
    and wait for it."""
    at.switch_page("views/harmful.py").run()
    at.radio(key="score_method").set_value(method)
    [start] = [b for b in at.run().button
               if b.label in ("Compute influence", "Compute this ranking")]
    start.click().run()
    job = wait_for_job(at)
    assert job.status == DONE, job.error
    return ok(at.run())


def tick_and_clean(at: AppTest, k: int) -> AppTest:
    """On page 3: tick the top k of the ranking shown; on page 4: retrain the last epoch
    without them (and the random control)."""
    at.number_input(key="top_k").set_value(k)
    button(at.run(), f"Tick top {k}").click().run()
    at.switch_page("views/retrain.py").run()
    at.radio(key="mode").set_value("last")
    button(at.run(), f"Retrain without the {k} ticked").click().run()
    assert wait_for_job(at).status == DONE
    return ok(at.run())


def editor(at: AppTest, part: str):
    """Page 3's review grid of one part ("train", "val", "test"): its data editor."""
    found = [d for d in at.data_editor if d.key and d.key.startswith(f"review-editor-{part}-")]
    assert len(found) == 1, [d.key for d in at.data_editor]
    return found[0]


def edit(at: AppTest, part: str, rows: dict[int, dict]) -> AppTest:
    """Edit cells of a review grid as the browser does: {row: {column: value}}."""
    at.session_state[editor(at, part).key] = {"edited_rows": rows, "added_rows": [],
                                              "deleted_rows": []}
    return ok(at.run())


# --- files a user might upload ----------------------------------------------------------------
def make_zip(classes=("cat", "dog"), n=4) -> bytes:
    """A small valid upload: class folders of grey 8×8 PNGs."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for c, cls in enumerate(classes):
            for i in range(n):
                png = io.BytesIO()
                Image.fromarray(np.full((8, 8), 40 * c + 10 * i, np.uint8)).save(png, "PNG")
                z.writestr(f"{cls}/{i}.png", png.getvalue())
    return buffer.getvalue()


def png(size=(8, 8), mode="L", color=0, fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt)
    return out.getvalue()


def zip_bytes(members: dict, method=zipfile.ZIP_DEFLATED) -> bytes:
    """members: name → bytes, or name → (bytes, external_attr)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            if isinstance(content, tuple):
                content, info.external_attr = content
            archive.writestr(info, content)
    return out.getvalue()


def two_classes(**extra) -> dict:
    """A minimal valid upload: classes a and b, two 8×8 grayscale images each."""
    members = {f"{c}/{i}.png": png(color=10 * i + (100 if c == "b" else 0))
               for c in "ab" for i in range(2)}
    return {**members, **extra}


def central_directory_patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    """Overwrite one field of every central-directory entry (and local header for flags)."""
    data = bytearray(data)
    at = data.find(b"PK\x01\x02")
    while at != -1:
        struct.pack_into(fmt, data, at + offset, value)
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(data)


_WRITES = []


def _audit(event, args):
    if not _WRITES:
        return
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int)
            and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing:
            _WRITES[-1].append((event, path))
    elif event in ("os.rename", "os.mkdir", "os.symlink", "os.link", "shutil.copyfile",
                   "os.remove", "os.rmdir", "os.chmod", "os.truncate"):
        _WRITES[-1].append((event, args[0]))


sys.addaudithook(_audit)


def load_without_writing(source):
    """load_upload, asserting (through Python's audit hooks) that it wrote no file anywhere."""
    _WRITES.append([])
    try:
        return load_upload(source)
    finally:
        writes = _WRITES.pop()
        assert not writes, f"load_upload wrote files: {writes}"


def refused(source, *words):
    """The DataError message, after checking it names the problem (all `words`)."""
    with pytest.raises(DataError) as caught:
        load_without_writing(source)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose header claims width × height (the data stays tiny)."""
    data = bytearray(png((1, 1)))
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[8:33] = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    return bytes(data)


# --- a quadratic problem for exactness tests ----------------------------------------------------
def squared_loss(out, y):
    return 0.5 * (out[:, 0] - y) ** 2


def least_squares(n: int, epochs: int, batch_size: int, l2: float, lr_decay: str):
    """A linear model with squared loss on n random instances (5 features, float64), its SGD
    schedule, θ[1] and a random query u."""
    gen = torch.Generator().manual_seed(0)
    d = 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(d, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        n, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    model = nn.Linear(d, 1).double()
    obj = Objective(model, x, y, l2=l2, loss=squared_loss)
    cfg = SGDConfig(epochs=epochs, batch_size=batch_size, lr=0.05, lr_decay=lr_decay, l2=l2,
                    seed=3)
    theta0 = initial_params(model, "cpu", torch.float64)
    u = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta0.items()}
    return obj, make_schedule(n, cfg), theta0, u


def logistic(n=50, l2=0.01, hidden=None):
    """Softmax regression on n random instances of 4 features and 3 classes (float64), or a
    network with one tanh layer of `hidden` units; θ[0] and a random query u."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    torch.manual_seed(2)
    model = (nn.Linear(4, 3) if hidden is None else
             nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))).double()
    obj = Objective(model, x, y, l2=l2)
    theta0 = initial_params(model, "cpu", torch.float64)
    u = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta0.items()}
    return obj, theta0, u
