"""Helpers shared by several test modules (no test module imports another)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.services import jobs
from app.services.store import DONE

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


def wait_for_job(at: AppTest) -> jobs.Job:
    job = jobs.latest(session_of(at))
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
        at.number_input(key=f"lr-{model}").set_value(lr)
    if l2 is not None:
        at.number_input(key="l2").set_value(l2)
    button(at.run(), "Start training").click().run()
    job = wait_for_job(at)
    ok(at.run())
    return at, job


def trained_in_app() -> AppTest:
    """A new app session with the quickest real model (one epoch) trained on page 2."""
    at, job = train(new_app(), epochs=1)
    assert job.status == DONE, job.error
    return at


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
