"""The workspace: every data set, run, score table and cleaning round the app made, so that all of
it can be listed and reopened after a restart. UI-free.

    $INFLUENCE_WORKSPACE (default ./workspace)
        store.sqlite         metadata (stdlib sqlite3): data sets, runs, scores, rounds, sessions
        datasets/<id>/       an ImageSet saved with datasets.storage (no pickle)
        runs/<id>/           a run folder written by influence.run_folder (+ influence-<method>.csv,
                             relabel-<method>.csv, explain/<method>-<hash>.csv and .json)

Folders are written atomically (temporary sibling, then rename) and never changed afterwards; a
data set is stored once per content (its fingerprint), so sessions can share it without
disturbing each other. A run's status is one of STATUSES; a run whose job died with the server
process is marked `interrupted` when the store is next opened.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from contextlib import closing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd

import datasets
from datasets import DataError, ImageSet
from datasets.storage import atomic_file

from influence import run_folder
from influence.config import RunConfig, RunError
from influence.runs import Run

RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = "running", "done", "failed", "cancelled", \
    "interrupted"
STATUSES = (RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED)
BOOT = uuid.uuid4().hex[:12]  # this server process; jobs of another one cannot still be running

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT, folder TEXT NOT NULL,
    fingerprint TEXT NOT NULL, n INTEGER, shape TEXT, classes TEXT, flipped TEXT,
    split TEXT, parent TEXT, session TEXT, created REAL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, kind TEXT NOT NULL, parent TEXT,
    folder TEXT NOT NULL, status TEXT NOT NULL, config TEXT, metrics TEXT, error TEXT,
    session TEXT, owner TEXT, created REAL, finished REAL);
CREATE TABLE IF NOT EXISTS scores (
    run TEXT NOT NULL, method TEXT NOT NULL, file TEXT NOT NULL, seconds REAL, trust TEXT,
    created REAL, PRIMARY KEY (run, method));
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, base TEXT NOT NULL,
    method TEXT, mode TEXT, removed TEXT, cleaned TEXT, control TEXT, status TEXT NOT NULL,
    session TEXT, created REAL);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, state TEXT, updated REAL);
"""
# Columns added since the first release: a workspace made before gets them when opened.
ADDED_COLUMNS = (("scores", "query", "TEXT"),  # the validation ids left out of the query
                 ("rounds", "verdict", "TEXT"),  # influence.compare's figures of the round
                 ("rounds", "fixes", "TEXT"),  # sample id → new label, next to removals
                 ("scores", "relabel", "TEXT"))  # file of the relabel effects (SGD-influence)
# the result tables in a run folder: (text columns, number columns[, optional text columns]),
# for run_folder.read_csv
PREDICTIONS = (("sample_id", "part"), ("label", "predicted", "confidence"))
SCORES = (("sample_id", "label"), ("influence",), ("suggested_label",))
LOG = ((), ("step", "epoch", "loss", "accuracy"))
RELABEL = (("sample_id", "label", "best_label"), ("effect_best",))  # influence.relabel.table
EXPLANATION = (("test_id", "side", "sample_id", "label"), ("rank", "score"))  # explain.table
JSON_COLUMNS = ("shape", "classes", "flipped", "split", "config", "metrics", "trust", "removed",
                "state", "query", "verdict", "fixes")


def workspace_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("INFLUENCE_WORKSPACE") or "workspace").expanduser()


def new_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


# Owners of running jobs other than a server process, by the prefix of their `owner` value
# ("<kind>:<name>"): kind → is that job still alive? A cluster backend registers its own
# (register_owner, from app.services.cluster: "ray"); an owner of a kind nobody registered
# counts as gone.
_OWNER_CHECKS: dict[str, Callable[[str], bool]] = {}


def register_owner(kind: str, alive: Callable[[str], bool] | None) -> None:
    """Tell the store how to see whether a job owned by "<kind>:<name>" still lives (None: forget
    it; such runs count as interrupted when a store is next opened)."""
    if alive is None:
        _OWNER_CHECKS.pop(kind, None)
    else:
        _OWNER_CHECKS[kind] = alive


def owner_alive(owner: str | None) -> bool:
    """Is the server process that owns a running job still alive (and not a restart of us)?"""
    kind, _, name = (owner or "").partition(":")
    if kind in _OWNER_CHECKS:
        return _OWNER_CHECKS[kind](name)
    try:
        pid, boot = (owner or "").split(":")
        pid = int(pid)
    except ValueError:
        return False
    if pid == os.getpid():
        return boot == BOOT
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Metadata in SQLite, files in folders, under one workspace directory."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = workspace_root(root)
        try:
            for sub in ("datasets", "runs", "exports"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.executescript(SCHEMA)
                for table, column, kind in ADDED_COLUMNS:
                    have = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except OSError as e:  # (database errors come as a RunError from _db)
            raise RunError(f"cannot use the workspace folder {self.root}: {e}. Check that "
                           "it is writable and the disk is not full, or set "
                           "INFLUENCE_WORKSPACE to another folder") from None
        self.recover()

    @contextmanager
    def _db(self):
        """One transaction; a database error (disk full, unwritable, damaged file) becomes a
        RunError that says what to check."""
        try:
            with closing(sqlite3.connect(self.root / "store.sqlite", timeout=30)) as db:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                with db:
                    yield db
        except sqlite3.Error as e:
            raise RunError(f"cannot read or write the workspace database in {self.root}: "
                           f"{e}. Check that the disk is not full and the folder is "
                           "writable") from None

    def _rows(self, sql: str, args=()) -> list[dict]:
        with self._db() as db:
            return [decode(r) for r in db.execute(sql, args).fetchall()]

    def _one(self, sql: str, args=()) -> dict | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _write(self, sql: str, args=()) -> int:
        with self._db() as db:
            return db.execute(sql, args).lastrowid

    # --- restarts --------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Mark runs and rounds whose job died with its server process as interrupted, and
        remove their half-written folders. Returns the ids of the runs marked."""
        dead = [r for r in self._rows("SELECT id, owner, folder FROM runs WHERE status = ?",
                                      (RUNNING,)) if not owner_alive(r["owner"])]
        for r in dead:
            self._write("UPDATE runs SET status = ?, error = ?, finished = ? WHERE id = ? "
                        "AND status = ?", (INTERRUPTED, "the server stopped while this ran",
                                           time.time(), r["id"], RUNNING))
            folder = self.root / r["folder"]
            for partial in folder.parent.glob(f".{folder.name}.partial-*"):
                shutil.rmtree(partial, ignore_errors=True)
        for r in self._rows("SELECT id, cleaned, control FROM rounds WHERE status = ?",
                            (RUNNING,)):
            states = {self.run(i)["status"] for i in (r["cleaned"], r["control"]) if i}
            if RUNNING not in states:
                self._write("UPDATE rounds SET status = ? WHERE id = ?", (INTERRUPTED, r["id"]))
        return [r["id"] for r in dead]

    # --- data sets -------------------------------------------------------------------------
    def add_dataset(self, data: ImageSet, name: str, session: str | None = None,
                    parent: str | None = None, flipped: dict | None = None,
                    split: dict | None = None) -> dict:
        """Save a data set into the workspace once per content; returns its row."""
        fingerprint = data.fingerprint()
        found = self._one("SELECT * FROM datasets WHERE fingerprint = ?", (fingerprint,))
        if found and (self.root / found["folder"]).is_dir():
            return found
        dataset_id = f"d-{fingerprint}"
        folder = Path("datasets") / dataset_id
        if not datasets.storage.is_saved(self.root / folder):
            try:
                datasets.storage.save(data, self.root / folder)
            except (OSError, DataError) as e:
                if not datasets.storage.is_saved(self.root / folder):  # not saved by a rival
                    raise DataError(f"cannot save the data set into the workspace {self.root}: "
                                    f"{e}") from None
        self._write("INSERT OR REPLACE INTO datasets (id, name, source, folder, fingerprint, n, "
                    "shape, classes, flipped, split, parent, session, created) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (dataset_id, name, data.source, str(folder), fingerprint, len(data),
                     json.dumps(list(data.shape)), json.dumps(list(data.classes)),
                     json.dumps(flipped) if flipped else None,
                     json.dumps(split) if split else None, parent, session, time.time()))
        return self.dataset(dataset_id)

    def dataset(self, dataset_id: str) -> dict:
        row = self._one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))
        if row is None:
            raise DataError(f"no data set {dataset_id!r} in the workspace {self.root}")
        return row

    def datasets(self) -> list[dict]:
        return self._rows("SELECT * FROM datasets ORDER BY created DESC")

    def dataset_folder(self, dataset_id: str) -> Path:
        return self.root / self.dataset(dataset_id)["folder"]

    def load_data(self, dataset_id: str) -> ImageSet:
        return datasets.storage.load(self.dataset_folder(dataset_id))

    # --- runs ------------------------------------------------------------------------------
    def new_run(self, dataset_id: str, kind: str, config: RunConfig,
                session: str | None = None, parent: str | None = None) -> dict:
        """Register a run that is about to start (status running, owned by this process)."""
        run_id = new_id("r")
        folder = Path("runs") / run_id
        self._write("INSERT INTO runs (id, dataset, kind, parent, folder, status, config, "
                    "session, owner, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (run_id, dataset_id, kind, parent, str(folder), RUNNING,
                     json.dumps(asdict(config)), session, f"{os.getpid()}:{BOOT}", time.time()))
        return self.run(run_id)

    def set_owner(self, run_id: str, owner: str) -> None:
        """Hand a running run to another owner (e.g. a job on a cluster: see register_owner)."""
        self._write("UPDATE runs SET owner = ? WHERE id = ?", (owner, run_id))

    def insert_rows(self, table: str, rows: list[dict]) -> None:
        """Copy rows as this store's readers return them (run(), dataset(), …) into it: a job
        on a cluster worker gets its own store holding the rows it reads."""
        if table not in ("datasets", "runs", "scores", "rounds"):
            raise ValueError(f"unknown table {table!r}")
        for row in rows:
            values = [json.dumps(v) if k in JSON_COLUMNS and v is not None else v
                      for k, v in row.items()]
            self._write(f"INSERT OR REPLACE INTO {table} ({', '.join(row)}) VALUES "
                        f"({', '.join('?' * len(row))})", values)

    def finish_run(self, run_id: str, status: str, metrics: dict | None = None,
                   error: str | None = None, config: RunConfig | None = None) -> dict:
        assert status in STATUSES
        self._write("UPDATE runs SET status = ?, metrics = COALESCE(?, metrics), error = ?, "
                    "config = COALESCE(?, config), finished = ? WHERE id = ?",
                    (status, json.dumps(metrics) if metrics is not None else None, error,
                     json.dumps(asdict(config)) if config is not None else None, time.time(),
                     run_id))
        return self.run(run_id)

    def run(self, run_id: str) -> dict:
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise RunError(f"no run {run_id!r} in the workspace {self.root}")
        return row

    def runs(self, dataset_id: str | None = None) -> list[dict]:
        if dataset_id is None:
            return self._rows("SELECT * FROM runs ORDER BY created DESC")
        return self._rows("SELECT * FROM runs WHERE dataset = ? ORDER BY created DESC",
                          (dataset_id,))

    def run_folder(self, run_id: str) -> Path:
        return self.root / self.run(run_id)["folder"]

    def open_run(self, run_id: str, data: ImageSet | None = None) -> Run:
        """The saved, trained engine Run (refused clearly unless it finished)."""
        row = self.run(run_id)
        if row["status"] != DONE:
            raise RunError(f"run {run_id} is {row['status']}; only finished runs can be "
                           "opened")
        data = data if data is not None else self.load_data(row["dataset"])
        return run_folder.load(self.root / row["folder"], data)

    # --- result tables of a run (files in its folder) ------------------------------------------
    def table_file(self, run_id: str, table: str, method: str | None = None) -> Path | None:
        """The file of one of a run's result tables, each read by the method of its name:
        predictions, training_log, and scores and relabel of a ranking `method` (None where that
        ranking, or its relabel effects, are not kept)."""
        folder = self.run_folder(run_id)
        if table in ("predictions", "training_log"):
            return folder / ("predictions.csv" if table == "predictions" else "log.csv")
        if table not in ("scores", "relabel"):
            raise ValueError(f"unknown result table {table!r}")
        name = (self.score_info(run_id).get(method) or {}).get(
            "file" if table == "scores" else "relabel")
        return folder / name if name else None

    def predictions(self, run_id: str) -> pd.DataFrame:
        """sample_id, part, label, predicted, confidence for every image (written by jobs)."""
        return run_folder.read_csv(self.table_file(run_id, "predictions"), *PREDICTIONS)

    def training_log(self, run_id: str) -> pd.DataFrame:
        path = self.table_file(run_id, "training_log")
        return run_folder.read_csv(path, *LOG) if path.is_file() else run_folder.TrainingLog().frame()

    # --- scores ----------------------------------------------------------------------------
    def add_scores(self, run_id: str, method: str, frame: pd.DataFrame, seconds: float,
                   query: list[str] | None = None, relabel: pd.DataFrame | None = None) -> Path:
        """Keep a ranking of a run (replacing an earlier one of the same method); `query`: the
        validation ids left out of the query it was computed for; `relabel`: the relabel
        effects from the same retrace (influence.relabel.table), kept beside it."""
        path = run_folder.write_csv(frame, self.run_folder(run_id) / f"influence-{method}.csv")
        effects = None if relabel is None else run_folder.write_csv(
            relabel, self.run_folder(run_id) / f"relabel-{method}.csv").name
        self._write("INSERT OR REPLACE INTO scores (run, method, file, seconds, created, query, "
                    "relabel) VALUES (?,?,?,?,?,?,?)",
                    (run_id, method, path.name, seconds, time.time(),
                     json.dumps(sorted(query or [])), effects))
        return path

    def set_trust(self, run_id: str, method: str, trust: dict) -> None:
        self._write("UPDATE scores SET trust = ? WHERE run = ? AND method = ?",
                    (json.dumps(trust), run_id, method))

    def score_info(self, run_id: str) -> dict[str, dict]:
        """method → its row (file, seconds, trust) for every scoring of this run."""
        return {r["method"]: r for r in self._rows("SELECT * FROM scores WHERE run = ?",
                                                     (run_id,))}

    def scores(self, run_id: str, method: str) -> pd.DataFrame:
        path = self.table_file(run_id, "scores", method)
        if path is None:
            raise RunError(f"run {run_id} has not been scored with {method}")
        return run_folder.read_csv(path, *SCORES)

    def relabel(self, run_id: str, method: str) -> pd.DataFrame | None:
        """The relabel effects kept with a ranking (influence.relabel.table), or None."""
        path = self.table_file(run_id, "relabel", method)
        return None if path is None else run_folder.read_csv(path, *RELABEL)

    # --- explanations of single test images (under a run folder's explain/) ---------------
    def explanation_file(self, run_id: str, test_id: str, method: str,
                         suffix: str = "csv") -> Path:
        """Where the explanation of one test image is kept (named by a hash: ids may hold any
        character); its trust check's figures go next to it as JSON."""
        key = hashlib.sha1(test_id.encode()).hexdigest()[:16]
        return self.run_folder(run_id) / "explain" / f"{method}-{key}.{suffix}"

    def add_explanation(self, run_id: str, test_id: str, method: str,
                        frame: pd.DataFrame) -> None:
        """Keep the explanation of a test image (influence.explain.table)."""
        path = self.explanation_file(run_id, test_id, method)
        path.parent.mkdir(exist_ok=True)
        run_folder.write_csv(frame, path)

    def explanation(self, run_id: str, test_id: str, method: str) -> pd.DataFrame | None:
        """The kept explanation, or None when there is none yet."""
        path = self.explanation_file(run_id, test_id, method)
        return run_folder.read_csv(path, *EXPLANATION) if path.is_file() else None

    def set_explanation_trust(self, run_id: str, test_id: str, method: str,
                              trust: dict) -> None:
        path = self.explanation_file(run_id, test_id, method, "json")
        path.parent.mkdir(exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(trust))

    def explanation_trust(self, run_id: str, test_id: str, method: str) -> dict | None:
        path = self.explanation_file(run_id, test_id, method, "json")
        return json.loads(path.read_text()) if path.is_file() else None

    # --- cleaning rounds -------------------------------------------------------------------
    def new_round(self, dataset_id: str, base: str, method: str | None, mode: str,
                  removed: list[str], cleaned: str, control: str | None,
                  session: str | None = None, fixes: dict[str, str] | None = None) -> int:
        """A cleaning round: `removed` ids and `fixes` (sample id → new label, a class name)."""
        return self._write("INSERT INTO rounds (dataset, base, method, mode, removed, cleaned, "
                           "control, status, session, created, fixes) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           (dataset_id, base, method, mode, json.dumps(list(removed)), cleaned,
                            control, RUNNING, session, time.time(), json.dumps(fixes or {})))

    def finish_round(self, round_id: int, status: str, verdict: dict | None = None) -> None:
        self._write("UPDATE rounds SET status = ?, verdict = COALESCE(?, verdict) WHERE id = ?",
                    (status, json.dumps(verdict) if verdict is not None else None, round_id))

    def round(self, round_id: int) -> dict:
        row = self._one("SELECT * FROM rounds WHERE id = ?", (round_id,))
        if row is None:
            raise RunError(f"no cleaning round {round_id}")
        return row

    def rounds(self, dataset_id: str | None = None, base: str | None = None) -> list[dict]:
        where, args = [], []
        for column, value in (("dataset", dataset_id), ("base", base)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM rounds" + (" WHERE " + " AND ".join(where) if where else "")
        return self._rows(sql + " ORDER BY id", args)

    # --- browser sessions ------------------------------------------------------------------
    def session_state(self, session: str) -> dict:
        row = self._one("SELECT state FROM sessions WHERE id = ?", (session,))
        return row["state"] if row and isinstance(row["state"], dict) else {}

    def save_session_state(self, session: str, state: dict) -> None:
        self._write("INSERT OR REPLACE INTO sessions (id, state, updated) VALUES (?,?,?)",
                    (session, json.dumps(state), time.time()))


def decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in JSON_COLUMNS:
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                out[key] = None
    return out
