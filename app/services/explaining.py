"""Why this mistake? Background jobs that explain one test image of a run (influence.explain) and
check that explanation against real retraining, with their results kept in the run's folder.

An explanation is a small CSV per (run, test image, method) under the run folder's `explain/`:
the training images whose removal most lowers that test image's loss and those whose removal
most raises it (influence.explain.table). The trust check's figures go next to it as JSON.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd

from influence import explain, methods, run_folder, trust
from influence.config import RunError
from influence.progress import Progress

from . import jobs
from .store import DONE, Store

TOP = 20  # training images kept per side
CHECK_SINGLES, CHECK_GROUPS = 10, 10


def path(store: Store, run_id: str, test_id: str, method: str, suffix: str = "csv") -> Path:
    """Where the explanation of one test image is kept (named by a hash: ids may hold any
    character)."""
    key = hashlib.sha1(test_id.encode()).hexdigest()[:16]
    return store.run_folder(run_id) / "explain" / f"{method}-{key}.{suffix}"


def stored(store: Store, run_id: str, test_id: str, method: str) -> pd.DataFrame | None:
    """The kept explanation, or None when there is none yet."""
    file = path(store, run_id, test_id, method)
    if not file.is_file():
        return None
    return run_folder.read_csv(file, text=("test_id", "side", "sample_id", "label"),
                         numbers=("rank", "score"))


def stored_check(store: Store, run_id: str, test_id: str, method: str) -> dict | None:
    file = path(store, run_id, test_id, method, "json")
    return json.loads(file.read_text()) if file.is_file() else None


def _finished_run(store: Store, run_id: str, method: str) -> None:
    methods.get(method, among=methods.keys(explains="batched"))  # many test images, one retrace
    if store.run(run_id)["status"] != DONE:
        raise RunError(f"run {run_id} is not finished: train a model first")


def start_explain(store: Store, session: str, run_id: str, test_id: str, method: str) -> jobs.Job:
    """Explain one test image of a finished run in the background (one retrace)."""
    _finished_run(store, run_id, method)

    def work(job: jobs.Job) -> dict:
        begun = time.perf_counter()
        run = store.open_run(run_id)
        run.test_positions([test_id])
        job.say(f"following training backwards for test image {test_id} "
                f"({methods.get(method).title})")
        job.report(Progress("score", 0, 1))
        matrix = explain.test_scores(run, method, [test_id], on_progress=job.report)
        frame = explain.table(run, [test_id], matrix, TOP)
        file = path(store, run_id, test_id, method)
        file.parent.mkdir(exist_ok=True)
        run_folder.write_csv(frame, file)
        job.say(f"done in {time.perf_counter() - begun:.1f} s")
        return {"run": run_id, "test_id": test_id, "method": method}

    return jobs.start(session, "explain", f"Explaining test image {test_id}", work,
                      result={"run": run_id, "test_id": test_id, "method": method})


def start_explain_check(store: Store, session: str, run_id: str, test_id: str,
                        method: str) -> jobs.Job:
    """The trust check for one explained test image: real retraining without single training
    images spread over its ranking and random groups, measuring that test image's loss."""
    _finished_run(store, run_id, method)

    def work(job: jobs.Job) -> dict:
        run = store.open_run(run_id)
        job.say(f"retraining without each of {CHECK_SINGLES} single images and {CHECK_GROUPS} "
                f"random groups, all at once, to compare with the estimates for {test_id}")
        result = trust.of_test_image(run, method, test_id, CHECK_SINGLES,
                                     on_progress=job.report, groups=CHECK_GROUPS)
        figures = {k: result[k] for k in jobs.TRUST if k in result}
        file = path(store, run_id, test_id, method, "json")
        file.parent.mkdir(exist_ok=True)
        file.write_text(json.dumps(figures))
        return figures

    return jobs.start(session, "explain-check", f"Checking the explanation of {test_id}", work,
                      result={"run": run_id, "test_id": test_id, "method": method})
