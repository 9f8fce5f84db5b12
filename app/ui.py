"""What every page shares: the workspace store, this browser session's state, the sidebar, live
job panels, thumbnails and charts. No training or scoring here: that is influence.jobs."""
from __future__ import annotations

import base64
import io
import os
import re
import time
import uuid

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image
from plotly.subplots import make_subplots

import datasets
from datasets import DataError, ImageSet
from influence import baselines, jobs, runs
from influence.store import (DONE, INTERRUPTED, LOG, PREDICTIONS, RUNNING, SCORES, Store,
                             workspace_root)

METHOD_NAMES = {"sgd": "SGD-influence, exact (all epochs)",
                "sgd-last": "SGD-influence, fast (last epoch)",
                "kl": "influence function (Koh & Liang)", "tracin": "TracIn",
                "confident-learning": "likely wrong label (confident learning)",
                "isolation-forest": "unusual image (Isolation Forest)",
                "autoencoder": "unusual image (autoencoder)"}
METHOD_HELP = {
    "sgd": "Follows the whole training run backwards (the paper's Algorithm 2).",
    "sgd-last": "Follows only the last epoch backwards: a cheaper approximation (the paper's "
                "Section 7.2).",
    "kl": "Koh & Liang's influence function at the final model. It assumes training reached a "
          "minimum, which a few epochs of SGD rarely do.",
    "tracin": "Adds up, over the saved epochs, how much each image pulled the same way as the "
              "validation loss (TracIn). No second derivatives: quick, but rougher.",
    "confident-learning": "A separate simple model that never saw the image judges how "
                          "plausible its given label is (cleanlab). The usual first tool for "
                          "wrong labels; it says nothing about the effect on your model.",
    "isolation-forest": "Images the trained network sees as unlike the others (Isolation Forest "
                        "on its features). Ignores the labels.",
    "autoencoder": "Images a small autoencoder reconstructs worst: odd-looking images. Ignores "
                   "the labels and the model.",
}
MODEL_NAMES = {"logreg": "logistic regression", "dnn": "small neural network (2×8)",
               "cnn": "the paper's MNIST CNN", "cnn-small": "small CNN",
               "cnn-cifar": "CIFAR-size CNN"}
BLUE, ORANGE, GREY, GREEN, RED = "#1f77b4", "#ff7f0e", "#9e9e9e", "#2ca02c", "#d62728"
POLL_SECONDS = 1.0


# --- workspace and session state -----------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _store(root: str) -> Store:
    return Store(root)  # a handle on the shared workspace folder; holds no user's model


def store() -> Store:
    return _store(str(workspace_root().resolve()))


@st.cache_resource(show_spinner=False, max_entries=4)
def _data(folder: str) -> tuple[ImageSet, dict[str, int]]:
    """A stored data set (read-only, immutable: safe to share) and its id → position map."""
    data = datasets.storage.load(folder)
    return data, {sid: i for i, sid in enumerate(data.ids)}


def data_of(dataset_id: str) -> tuple[ImageSet, dict[str, int]]:
    return _data(str(store().dataset_folder(dataset_id)))


def start_session() -> None:
    """Give this browser session an id kept in the URL (?s=…), so that a refresh finds its data
    set, run, ticks and running job again, and restore what it had chosen."""
    ss = st.session_state
    if "sid" not in ss:
        given = st.query_params.get("s", "")
        ss.sid = given if re.fullmatch(r"[0-9a-f]{16}", given or "") else uuid.uuid4().hex[:16]
        ss.app = {"split": {"val": 0.2, "test": 0.2, "seed": 0}, "ticks": {}, "method": {}}
        ss.app.update(store().session_state(ss.sid))
        if not ss.app.get("dataset"):
            use_builtin("digits")
    if st.query_params.get("s") != ss.sid:
        st.query_params["s"] = ss.sid
    run = current_run()
    if run is not None and run["status"] in ("failed", "cancelled"):  # never the current model
        previous = state().get("previous_run")
        set_run(previous if previous and previous != run["id"] else None)
    for key in ss.setdefault("_remembered", set()):  # keep settings while on other pages:
        if key in ss:                                 # Streamlit drops the state of widgets
            ss[key] = ss[key]                         # that a run does not draw


def remember(key: str, default):
    """A widget key whose value survives page switches (the widget is then created without a
    value of its own: st.session_state holds it)."""
    st.session_state.setdefault(key, default)
    st.session_state.setdefault("_remembered", set()).add(key)
    return key


def state() -> dict:
    return st.session_state.app


def save() -> None:
    store().save_session_state(st.session_state.sid, state())


def sid() -> str:
    return st.session_state.sid


def current_dataset() -> dict | None:
    dataset_id = state().get("dataset")
    if not dataset_id:
        return None
    try:
        return store().dataset(dataset_id)
    except DataError:
        return None


def current_run() -> dict | None:
    run_id = state().get("run")
    if not run_id:
        return None
    try:
        return store().run(run_id)
    except runs.RunError:
        return None


def set_dataset(row: dict) -> None:
    used = state().setdefault("datasets", [])  # the data sets this session has worked on
    if row["id"] not in used:
        used.append(row["id"])
    if state().get("dataset") != row["id"]:
        state().update(dataset=row["id"], run=None)
        if row.get("split"):
            state()["split"] = dict(row["split"])
    save()


def set_run(run_id: str | None) -> None:
    state()["run"] = run_id
    save()


def use_builtin(name: str) -> dict:
    """Load a built-in data set into the workspace (once) and make it current."""
    # torchvision sets: read from $DATA_DIR when it is set (never downloaded then), else
    # downloaded into the user's cache on first use
    data = datasets.load(name, os.environ.get("DATA_DIR") or None)
    row = store().add_dataset(data, BUILTIN_NAMES.get(name, name), sid())
    set_dataset(row)
    return row


BUILTIN_NAMES = {"digits": "Handwritten digits", "mnist": "MNIST", "fashion-mnist":
                 "Fashion-MNIST", "cifar10": "CIFAR-10"}


def ticks() -> set[str]:
    return set(state()["ticks"].get(state().get("run") or "", []))


def set_ticks(ids) -> None:
    run_id = state().get("run")
    if run_id:
        state()["ticks"][run_id] = sorted(ids)
        save()


def method() -> str | None:
    """The scoring method whose ranking this session looks at for the current run."""
    run_id = state().get("run")
    scored = store().score_info(run_id) if run_id else {}
    chosen = state()["method"].get(run_id or "")
    return chosen if chosen in scored else next(iter(sorted(scored)), None)


def split_settings() -> dict:
    return state()["split"]


@st.cache_data(show_spinner="Estimating time and disk …", max_entries=32)
def _estimate(dataset_id: str, settings: tuple) -> dict:
    data, _ = data_of(dataset_id)
    return jobs.estimate(data, runs.RunConfig(**dict(settings)))


def estimate(dataset_id: str, config: dict) -> dict:
    """Time and disk expected for a run with these settings (timed on a few real steps)."""
    keys = ("model", "epochs", "batch_size", "lr", "lr_decay", "l2", "seed", "val_fraction",
            "test_fraction", "dtype", "device")
    return _estimate(dataset_id, tuple((k, config[k]) for k in keys if k in config))


def visible(rows: list[dict]) -> list[dict]:
    """Saved work of this browser session; with the sidebar switch on, also that of other or
    earlier sessions (it can be opened; nothing of theirs is changed)."""
    if state().get("show_all"):
        return rows
    return [r for r in rows if r.get("session") == sid()]


# --- words ---------------------------------------------------------------------------------------
def dataset_label(row: dict) -> str:
    h, w, c = row["shape"]
    flipped = f" · demo: {len(row['flipped'])} training labels flipped" \
        if row.get("flipped") else ""
    return f"{row['name']} ({row['n']:,} images, {h}×{w}{' colour' if c == 3 else ''}){flipped}"


def run_label(row: dict) -> str:
    kind = {"train": "Trained model", "cleaned": "Cleaned model",
            "control": "Random-removal control"}.get(row["kind"], row["kind"])
    when = time.strftime("%d %b %H:%M", time.localtime(row["created"]))
    metrics = row.get("metrics") or {}
    removed = len((row.get("config") or {}).get("removed") or {})
    detail = f"test error {metrics['test_error']:.1%}" if "test_error" in metrics \
        else row["status"]
    gone = f", {removed} removed" if removed else ""
    return f"{kind} of {when}{gone} · {detail}"


def seconds(s: float) -> str:
    if s < 1:
        return "under a second"
    if s < 90:
        return f"about {s:.0f} s"
    return f"about {s / 60:.0f} min"


def size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def effect(score: float, method: str = "sgd") -> str:
    """A score in plain words. Every method ranks ascending: negative = more harmful or more
    suspicious."""
    if method in baselines.ESTIMATES_REMOVAL:
        amount = f"{abs(score):.2g}" if abs(score) >= 1e-4 else f"{abs(score):.1e}"
        return f"removing this is estimated to {'lower' if score < 0 else 'raise'} " \
               f"validation loss by {amount}"
    if method == "confident-learning":
        return f"label quality {score + 1:.2g} (near 0: the given label looks wrong)"
    if method == "isolation-forest":
        return f"outlier score {score:+.3f} ({'unusual' if score < 0 else 'typical'} image)"
    return f"reconstruction error {-score:.3g} (higher: a more unusual image)"


def need(what: str, page: str, label: str) -> None:
    st.info(what)
    st.page_link(page, label=label, icon=":material/arrow_forward:")
    st.stop()


# --- sidebar -------------------------------------------------------------------------------------
def sidebar() -> None:
    with st.sidebar:
        st.markdown("#### This session")
        dataset = current_dataset()
        run = current_run()
        st.markdown(f"**Data set:** {dataset_label(dataset) if dataset else 'none yet'}")
        st.markdown(f"**Model:** {run_label(run) if run else 'none yet — train one on page 2'}")
        st.markdown(f"**Ticked:** {len(ticks())} image{'s' * (len(ticks()) != 1)}")
        job = jobs.active(sid())
        if job is not None:
            _sidebar_job(job.id)
        else:
            st.markdown("**Job:** none running")
        st.divider()
        show = st.toggle("Show saved work of other sessions", value=bool(state().get("show_all")),
                         help="Data sets, models and cleaning rounds saved in this workspace by "
                         "other browser sessions or before a restart. You can open them; "
                         "nothing of theirs is changed.")
        if show != bool(state().get("show_all")):
            state()["show_all"] = show
            save()
            st.rerun()


@st.fragment(run_every=POLL_SECONDS)
def _sidebar_job(job_id: str) -> None:
    job = jobs.get(job_id)
    if job is None or not job.running:
        st.rerun()  # it finished: redraw the whole page with its result
    st.markdown(f"**Job:** {job.title.lower()} …")
    st.progress(job.fraction, text=f"{job.fraction:.0%}")


# --- live job panel ------------------------------------------------------------------------------
def job_panel(kind: str, curves: bool = True, log_after: bool = True) -> jobs.Job | None:
    """Progress, learning curves, text log and a Cancel button for this session's latest job of
    this kind; polls while it runs. Returns the job (or None)."""
    job = jobs.latest(sid(), kind)
    if job is None:
        return None
    if job.running:
        _live(job.id, curves)
    else:
        _draw(job, curves, log_after or job.status == "failed")
    return job


@st.fragment(run_every=POLL_SECONDS)
def _live(job_id: str, curves: bool) -> None:
    job = jobs.get(job_id)
    if job is None or not job.running:
        st.rerun()
    _draw(job, curves, True)
    if st.button("Cancel", key=f"cancel-{job.id}", icon=":material/stop_circle:"):
        job.cancel()
        st.toast("Cancelling …")


def _draw(job: jobs.Job, curves: bool, log: bool) -> None:
    if job.running:
        st.progress(job.fraction, text=job.progress_text())
    if curves and job.curves:
        phases = list(job.curves)
        cols = st.columns(len(phases)) if len(phases) > 1 else [st.container()]
        for col, phase in zip(cols, phases):
            with col:
                if len(phases) > 1:
                    st.caption(jobs.PHASES[phase])
                st.plotly_chart(curves_chart(job.curve(phase)), key=f"curve-{job.id}-{phase}")
    if job.lines and log:
        with st.expander("Log", expanded=job.running):
            st.code("\n".join(job.lines[-200:]), language=None, height=200)


def job_outcome(job: jobs.Job | None, done_text: str | None = None) -> None:
    """One line on how a finished job ended."""
    if job is None or job.running:
        return
    if job.status == "failed":
        st.error(job.error)
    elif job.status == "cancelled":
        st.warning("Cancelled. Nothing of it was kept; earlier results are unchanged.")
    elif done_text:
        st.success(done_text)


def busy_error(e: Exception) -> None:
    st.error(str(e) if isinstance(e, (jobs.Busy, DataError, runs.RunError)) else
             jobs.plain_message(e))


# --- images --------------------------------------------------------------------------------------
def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def enlarge(image: np.ndarray, side: int) -> Image.Image:
    """Scale up with sharp pixels (small images would blur in the browser)."""
    pil = to_pil(image)
    factor = max(1, side // max(pil.size))
    return pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.NEAREST)


def data_url(image: np.ndarray, side: int = 48) -> str:
    """A small PNG data URL: thumbnails for the rows on screen only."""
    buffer = io.BytesIO()
    enlarge(image, side).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_grid(data: ImageSet, positions, captions, per_row: int = 8, side: int = 64) -> None:
    positions = list(positions)
    for start in range(0, len(positions), per_row):
        cols = st.columns(per_row)
        for col, i, caption in zip(cols, positions[start:start + per_row],
                                   captions[start:start + per_row]):
            col.image(enlarge(data.images[i], side), caption=caption, width=side)


# --- reading results -----------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=64)
def _csv(path: str, mtime: float, columns: tuple) -> pd.DataFrame:
    """A result table of a run (a missing or damaged one is a RunError with a clear message)."""
    return runs.read_csv(path, *columns)


def _table(path, columns: tuple) -> pd.DataFrame:
    return _csv(str(path), path.stat().st_mtime if path.is_file() else 0.0, columns)


def predictions(run_id: str) -> pd.DataFrame:
    return _table(store().run_folder(run_id) / "predictions.csv", PREDICTIONS)


def scores(run_id: str, method_name: str) -> pd.DataFrame:
    info = store().score_info(run_id)[method_name]
    return _table(store().run_folder(run_id) / info["file"], SCORES)


def training_log(run_id: str) -> pd.DataFrame:
    path = store().run_folder(run_id) / "log.csv"
    return _table(path, LOG) if path.is_file() else pd.DataFrame()


def run_status_note(row: dict) -> None:
    """Say plainly why a run cannot be used."""
    if row["status"] == INTERRUPTED:
        st.warning("This run was interrupted: the server stopped while it was working. Nothing "
                   "half-done was kept; start it again.")
    elif row["status"] == "failed":
        st.error(f"This run failed: {row.get('error') or 'unknown reason'}")
    elif row["status"] == "cancelled":
        st.warning("This run was cancelled.")
    elif row["status"] == RUNNING:
        st.info("This run is still in progress.")


def usable(row: dict | None) -> bool:
    return row is not None and row["status"] == DONE


# --- charts --------------------------------------------------------------------------------------
def curves_chart(log: pd.DataFrame) -> go.Figure:
    """Loss and accuracy per training step (thin) and on the validation images at each epoch's
    end (dots), against epochs."""
    fig = make_subplots(1, 2, subplot_titles=("Loss (lower is better)",
                                              "Accuracy (higher is better)"))
    if len(log):
        position = log.groupby("epoch").cumcount() + 1
        per_epoch = log.groupby("epoch")["step"].transform("count")
        x = log["epoch"] - 1 + position / per_epoch
        val = log["val_loss"].notna()
        for col, (train_key, val_key) in enumerate((("loss", "val_loss"),
                                                    ("accuracy", "val_accuracy")), 1):
            fig.add_trace(go.Scatter(x=x, y=log[train_key], name="training (per step)",
                                     line=dict(color=BLUE, width=1), opacity=0.6,
                                     showlegend=col == 1, legendgroup="t"), 1, col)
            fig.add_trace(go.Scatter(x=x[val], y=log.loc[val, val_key],
                                     name="validation (per epoch)", mode="lines+markers",
                                     line=dict(color=ORANGE, width=2), showlegend=col == 1,
                                     legendgroup="v"), 1, col)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def class_counts_chart(data: ImageSet) -> go.Figure:
    counts = np.bincount(data.labels, minlength=len(data.classes))
    fig = go.Figure(go.Bar(x=[str(c) for c in data.classes], y=counts, marker_color=BLUE,
                           text=counts, textposition="outside"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title="Images per class",
                      xaxis_title="class", yaxis_title="images", xaxis_type="category",
                      yaxis_range=[0, counts.max() * 1.18])
    return fig


def scores_histogram(frame: pd.DataFrame, method: str = "sgd") -> go.Figure:
    fig = go.Figure()
    if method in baselines.ESTIMATES_REMOVAL:
        harmful = frame.influence < 0
        fig.add_trace(go.Histogram(x=frame.influence[harmful], name="harmful (removing helps)",
                                   marker_color=RED, nbinsx=60))
        fig.add_trace(go.Histogram(x=frame.influence[~harmful], name="helpful (removing hurts)",
                                   marker_color=GREEN, nbinsx=60))
        fig.add_vline(x=0, line_color=GREY, line_dash="dot")
        title = "All scores: estimated change of validation loss if removed"
        axis = "change of validation loss"
    else:
        fig.add_trace(go.Histogram(x=frame.influence, name="training images",
                                   marker_color=BLUE, nbinsx=60))
        title = f"All scores: {METHOD_NAMES[method]}"
        axis = "score (lower = more suspicious)"
    fig.update_layout(height=260, barmode="overlay", margin=dict(l=10, r=10, t=30, b=10),
                      title=title, xaxis_title=axis, yaxis_title="images",
                      yaxis=dict(type="log", dtick=1), legend=dict(orientation="h", y=-0.35))
    return fig
