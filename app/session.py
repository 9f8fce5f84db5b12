"""This browser session's state, the shared workspace store, and the result tables the pages
read (one cached reader per stored table). A session has an id kept in the URL (?s=…); what it
chose (data set, model, ticks, fixes, ranking) is saved in the workspace, so a refresh or a
restart finds it again.

Names: a `run_row` or `dataset_row` is the store's row (a dict) of a run or data set; a Run is
the engine's object (influence.runs.Run), opened from the store only where a page needs it."""
from __future__ import annotations

import os
import re
import uuid

import pandas as pd
import streamlit as st

import datasets
from datasets import DataError, ImageSet
from influence import labels
from influence.config import RunConfig, RunError

from .services import timing
from .services.store import CANCELLED, DONE, FAILED, Store, workspace_root


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
    run_row = current_run_row()
    if run_row is not None and run_row["status"] in (FAILED, CANCELLED):  # never the model
        previous = state().get("previous_run")                           # in use
        set_run(previous if previous and previous != run_row["id"] else None)
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


def current_dataset_row() -> dict | None:
    dataset_id = state().get("dataset")
    if not dataset_id:
        return None
    try:
        return store().dataset(dataset_id)
    except DataError:
        return None


def current_run_row() -> dict | None:
    run_id = state().get("run")
    if not run_id:
        return None
    try:
        return store().run(run_id)
    except RunError:
        return None


def set_dataset(dataset_row: dict) -> None:
    used = state().setdefault("datasets", [])  # the data sets this session has worked on
    if dataset_row["id"] not in used:
        used.append(dataset_row["id"])
    if state().get("dataset") != dataset_row["id"]:
        state().update(dataset=dataset_row["id"], run=None)
        if dataset_row.get("split"):
            state()["split"] = dict(dataset_row["split"])
    save()


def set_run(run_id: str | None) -> None:
    state()["run"] = run_id
    save()


def use_builtin(name: str) -> dict:
    """Load a built-in data set into the workspace (once) and make it current."""
    # torchvision sets: read from $DATA_DIR when it is set (never downloaded then), else
    # downloaded into the user's cache on first use
    data = datasets.load(name, os.environ.get("DATA_DIR") or None)
    dataset_row = store().add_dataset(data, datasets.BUILTINS[name].title, sid())
    set_dataset(dataset_row)
    return dataset_row

def ticks() -> set[str]:
    return set(state()["ticks"].get(state().get("run") or "", []))


def set_ticks(ids) -> None:
    run_id = state().get("run")
    if run_id:
        state()["ticks"][run_id] = sorted(ids)
        save()


def fixes(run_id: str | None, ticked: set[str]) -> dict[str, str]:
    """Sample id → new label (a class name) this session chose for a run, but for the images
    ticked for removal too (an image is removed or fixed: a tick on page 3's ranking wins)."""
    chosen = state().setdefault("fixes", {}).get(run_id or "", {})
    return {sample: label for sample, label in chosen.items() if sample not in ticked}


def set_fixes(run_id: str, chosen: dict[str, str], ticked: set[str] | None = None) -> None:
    """Keep a run's fixes (and its ticks, when given) in the session."""
    state().setdefault("fixes", {})[run_id] = dict(sorted(chosen.items()))
    if ticked is not None:
        state()["ticks"][run_id] = sorted(ticked)
    save()


def method() -> str | None:
    """The scoring method whose ranking this session looks at for the current run."""
    run_id = state().get("run")
    scored = store().score_info(run_id) if run_id else {}
    chosen = state()["method"].get(run_id or "")
    return chosen if chosen in scored else next(iter(sorted(scored)), None)


def split_settings() -> dict:
    return state()["split"]


@st.cache_data(show_spinner="Estimating time and disk …", max_entries=32, ttl=60)  # timed
# anew after a minute: the machine's load changes
def _estimate(dataset_id: str, settings: tuple) -> dict:
    data, _ = data_of(dataset_id)
    return timing.estimate(data, RunConfig(**dict(settings)))


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


# --- result tables of a run: the store's readers, cached until their file changes ------------
@st.cache_data(show_spinner=False, max_entries=64)
def _stored(table: str, run_id: str, method: str | None, file: str, mtime: float):
    """Store.<table>(run_id[, method]) (a missing or damaged file is a RunError with a clear
    message); `file` and `mtime` only key the cache."""
    read = getattr(store(), table)
    return read(run_id) if method is None else read(run_id, method)


def _read(table: str, run_id: str, method: str | None = None):
    file = store().table_file(run_id, table, method)
    mtime = file.stat().st_mtime if file is not None and file.is_file() else 0.0
    return _stored(table, run_id, method, str(file), mtime)


def predictions(run_id: str) -> pd.DataFrame:
    return _read("predictions", run_id)


def training_log(run_id: str) -> pd.DataFrame:
    return _read("training_log", run_id)


def scores(run_id: str, method: str) -> pd.DataFrame:
    return _read("scores", run_id, method)


def relabel(run_id: str, method: str) -> pd.DataFrame | None:
    """The relabel effects kept with a ranking of the run (influence.relabel.table), or None."""
    return _read("relabel", run_id, method)


def usable(run_row: dict | None) -> bool:
    return run_row is not None and run_row["status"] == DONE


@st.cache_data(show_spinner="Checking the labels of the held-out images …", max_entries=16)
def label_check(run_id: str, part: str) -> pd.DataFrame:
    """The label check of a finished run's validation or test images (influence.labels): the
    trained model's own probabilities, which are out of sample for them."""
    return labels.check_part(store().open_run(run_id), part)


def query_exclude(run_id: str, flagged, part=None) -> list[str]:
    """The validation images this session leaves out of the query for this run: by default the
    ones the label check flags, until the user decides otherwise (then any of `part`, the
    validation ids; without it, only flagged ones count)."""
    chosen = state().setdefault("exclude", {}).get(run_id)
    allowed = set(flagged if part is None else part)
    return list(flagged) if chosen is None else [sid for sid in chosen if sid in allowed]


def set_query_exclude(run_id: str, ids) -> None:
    state().setdefault("exclude", {})[run_id] = sorted(ids)
    save()


def reviewed(run_id: str, part: str) -> dict[str, str]:
    """The review grid's decisions on a run's training, validation or test images: sample id →
    the label the user accepted (a class name), or "" where the given label was kept. For the
    training images the accepted labels are the run's fixes (fixes), kept there only."""
    kept = state().setdefault("review", {}).get(run_id, {}).get(part, {})
    if part != "train":
        return dict(kept)
    return {**{sid: "" for sid, label in kept.items() if not label},
            **state().setdefault("fixes", {}).get(run_id, {})}


def set_reviewed(run_id: str, part: str, decided: dict[str, str]) -> None:
    """Keep the review grid's decisions; accepted labels of training images become fixes."""
    review = state().setdefault("review", {}).setdefault(run_id, {})
    if part == "train":
        review[part] = {sid: "" for sid, label in decided.items() if not label}
        set_fixes(run_id, {sid: label for sid, label in decided.items() if label})
    else:
        review[part] = dict(sorted(decided.items()))
        save()
