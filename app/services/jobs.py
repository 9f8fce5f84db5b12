"""Background jobs: training, scoring, the trust check and cleaning rounds, each in a thread that
makes no UI calls (no streamlit). A page reads a job's progress, log and learning curves while it
runs, and can cancel it.

Jobs live in one registry per server process, keyed by a browser-session id: a rerun, a page
switch or a browser refresh (same session id) finds the running job again instead of starting
a second one, and two browser sessions never see each other's jobs. Everything a job produces
goes through the Store (status running → done / failed / cancelled; a job that dies with the
server is marked interrupted by the store on the next start).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import numpy as np
import pandas as pd
import torch

from datasets import DataError
from influence import cleaning, kcurve, methods, probe, relabel, run_folder, runs, trust
from influence.progress import Cancelled, Progress
from influence.config import RunConfig, RunError
from influence.run_folder import TrainingLog
from influence.sgd import Diverged

from ..words import PHASES, plain_message
from .store import CANCELLED, DONE, FAILED, RUNNING, Store

log = logging.getLogger(__name__)
KEEP_FINISHED = 10  # finished jobs kept per session, newest first


class Busy(RuntimeError):
    """This browser session already runs a job; the message names it."""


class Job:
    """One piece of long work in a background thread; all fields are safe to read any time."""

    def __init__(self, session: str, kind: str, title: str):
        self.id = uuid.uuid4().hex[:10]
        self.session, self.kind, self.title = session, kind, title
        self.status = RUNNING
        self.phase, self.done, self.total = kind, 0, 0
        self.curves: dict[str, TrainingLog] = {}  # phase → live training log (loss, accuracy)
        self.epochs: dict[str, int] = {}  # phase → its number of epochs
        self.lines: list[str] = []
        self.result: dict = {}
        self.error: str | None = None
        self.suggested_lr: float | None = None
        self.started, self.finished = time.time(), None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # --- read by the page ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def curve(self, phase: str | None = None) -> pd.DataFrame:
        """The training log of a phase (default: the latest one) as a table, so far."""
        if not self.curves:
            return TrainingLog().frame()
        keep = self.curves.get(phase) or list(self.curves.values())[-1]
        return pd.DataFrame(list(keep.rows), columns=TrainingLog().frame().columns)

    # --- called from the work thread -------------------------------------------------------
    def say(self, line: str) -> None:
        self.lines.append(f"[{self.elapsed:6.1f} s] {line}")

    def report(self, p: Progress, phase: str | None = None) -> None:
        """The engine's progress callback; raising Cancelled here stops the work."""
        if self._cancel.is_set():
            raise Cancelled()
        self.phase, self.done, self.total = phase or p.phase, p.done, p.total
        if p.val is not None and phase in self.curves:
            self.say(epoch_line(self.curves[phase].rows, p.val, self.epochs.get(phase)))

    def training_log(self, phase: str, epochs: int) -> TrainingLog:
        """A fresh TrainingLog for a training phase, reporting to this job."""
        self.epochs[phase] = epochs
        self.curves[phase] = TrainingLog(lambda p: self.report(p, phase))
        return self.curves[phase]

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> "Job":
        if self._thread is not None:
            self._thread.join(timeout)
        return self


def epoch_line(rows: list[dict], val: dict, epochs: int | None) -> str:
    """One line of the text log at the end of an epoch."""
    epoch = val["epoch"] + 1
    mine = [r for r in rows if r["epoch"] == epoch]
    loss = np.mean([r["loss"] for r in mine]) if mine else float("nan")
    acc = np.mean([r["accuracy"] for r in mine]) if mine else float("nan")
    total = f" of {epochs}" if epochs else ""
    return (f"epoch {epoch}{total}: training loss {loss:.4f}, accuracy {acc:.1%} · "
            f"validation loss {val['val_loss']:.4f}, accuracy {val['val_accuracy']:.1%}")


def use_cpu_threads(n: int | None = None) -> int:
    """Set torch's CPU threads for this process's jobs: $INFLUENCE_THREADS, else 1. The app's
    models are small: a second thread gains little, and on a busy machine OpenMP threads that
    spin waiting for each other make every step many times slower (benchmarks/flow.py measures
    both). Several jobs (one per browser session) then share the cores instead."""
    global _threads
    _threads = max(1, n or int(os.environ.get("INFLUENCE_THREADS") or 1))
    torch.set_num_threads(_threads)
    return torch.get_num_threads()


_threads: int | None = None  # set by use_cpu_threads; every job thread uses the same count, so
# that results do not depend on which thread computed them (float sums differ by thread count)


# --- the registry ------------------------------------------------------------------------------
_jobs: dict[str, Job] = {}
_lock = threading.Lock()
REMOTE = None  # where jobs given a store run when a cluster is configured (a backend with
# submit(job, work, store, reads, owns): app.services.cluster sets it); None: here, in threads


def jobs_of(session: str) -> list[Job]:
    """This session's jobs, newest first."""
    with _lock:
        return sorted((j for j in _jobs.values() if j.session == session),
                      key=lambda j: j.started, reverse=True)


def active(session: str) -> Job | None:
    return next((j for j in jobs_of(session) if j.running), None)


def latest(session: str, kind: str | None = None) -> Job | None:
    return next((j for j in jobs_of(session) if kind is None or j.kind == kind), None)


def get(job_id: str) -> Job | None:
    with _lock:
        return _jobs.get(job_id)


def start(session: str, kind: str, title: str, work: Callable[[Job], dict],
          fresh: bool = False, result: dict | None = None, store: Store | None = None,
          reads: list[str] = (), owns: list[str] = ()) -> Job:
    """Run `work(job)` in a background thread, unless this session already runs a job: the same
    kind is found again (never duplicated; with `fresh`, Busy is raised instead), another kind
    raises Busy. With a `store` and a cluster configured (REMOTE), the work runs there instead,
    with its own copy of the stored runs it `reads`; the runs it `owns` (creates) are handed to
    it."""
    with _lock:
        running = next((j for j in _jobs.values() if j.session == session and j.running), None)
        if running is not None:
            if running.kind == kind and not fresh:
                return running
            raise Busy(f"{running.title} is still running: wait for it to finish or cancel it")
        job = Job(session, kind, title)
        job.result.update(result or {})
        _jobs[job.id] = job
        _prune(session)
    if store is not None and REMOTE is not None:
        REMOTE.submit(job, work, store, list(reads), list(owns))
        return job
    job._thread = threading.Thread(target=_execute, args=(job, work), daemon=True,
                                   name=f"job-{kind}-{job.id}")
    job._thread.start()
    return job


def adopt(job: Job) -> Job:
    """Register a job that runs elsewhere and was started by an earlier server process (a
    cluster backend re-attaching to it after a restart); the one registered already wins."""
    with _lock:
        return _jobs.setdefault(job.id, job)


def launch(store: Store, session: str, kind: str, title: str, work: Callable[[Job], dict],
           run_ids: list[str], result: dict) -> Job:
    """start(), for work on runs registered beforehand: if the job is refused or turns out to be
    a duplicate, those runs are closed as cancelled so that none stays 'running'."""
    try:
        job = start(session, kind, title, work, fresh=True, result=result, store=store,
                    owns=run_ids)
    except Busy:
        for run_id in run_ids:
            store.finish_run(run_id, CANCELLED, error="another job of this session was running")
        raise
    return job


def _prune(session: str) -> None:
    finished = sorted((j for j in _jobs.values() if j.session == session and not j.running),
                      key=lambda j: j.started, reverse=True)
    for old in finished[KEEP_FINISHED:]:
        del _jobs[old.id]


def _execute(job: Job, work: Callable[[Job], dict]) -> None:
    if _threads is not None:
        torch.set_num_threads(_threads)
    try:
        job.result.update(work(job) or {})
        job.status = DONE
    except Cancelled:
        job.status = CANCELLED
        job.say("cancelled; nothing of this job was kept")
    except Exception as e:  # every failure becomes a message; the full trace goes to the log
        job.error = plain_message(e)
        job.suggested_lr = getattr(e, "suggested_lr", None)
        job.status = FAILED
        job.say(f"stopped: {job.error}")
        if not isinstance(e, (DataError, RunError, Diverged, OSError)):
            log.exception("job %s (%s) failed", job.id, job.kind)
    finally:
        job.finished = time.time()


@contextmanager
def tracked(store: Store, run_id: str):
    """Mark a stored run failed or cancelled when the work on it stops early."""
    try:
        yield
    except Cancelled:
        store.finish_run(run_id, CANCELLED, error="cancelled by the user")
        raise
    except BaseException as e:
        store.finish_run(run_id, FAILED, error=plain_message(e))
        raise


# --- the work the app starts -------------------------------------------------------------------
def start_training(store: Store, session: str, dataset_id: str, config: RunConfig,
                   probe_lr: bool = False) -> Job:
    """Train a new recorded run on a stored data set, in the background; with `probe_lr`, a
    short probe chooses the learning rate first (influence.probe). Bad settings are refused
    before the job starts (RunError / DataError with a clear message)."""
    if (job := active(session)) is not None:
        if job.kind == "train":
            return job
        raise Busy(f"{job.title} is still running: wait for it to finish or cancel it")
    data = store.load_data(dataset_id)
    planned = runs.Run(replace(config, dataset=str(store.dataset_folder(dataset_id).resolve())),
                       data)
    config = planned.config  # resolved: the data's fingerprint, the preset's learning rate
    row = store.new_run(dataset_id, "train", config, session)

    def work(job: Job) -> dict:
        with tracked(store, row["id"]):
            curve = job.training_log("train", config.epochs)
            rate = "chosen by a probe" if probe_lr else f"{config.lr:g}"
            job.say(f"training the {planned.preset.name} model on {len(planned.train_ids):,} "
                    f"images for {config.epochs} epochs (batch size {config.batch_size}, "
                    f"learning rate {rate})")
            if probe_lr:
                job.say(f"trying {len(probe.FACTORS)} learning rates for a few steps, to choose "
                        "one")
                run = probe.train_with_probe(
                    config, store.root / row["folder"], data,
                    lambda p: job.report(p) if p.phase == "probe" else curve(p))
                job.say(f"learning rate {run.config.lr:g}: {run.metrics['lr_probe']['reason']}")
            else:
                run = run_folder.train_new(config, store.root / row["folder"], data, curve)
            store.finish_run(row["id"], DONE, run.metrics, config=run.config)
        job.say(f"done in {run.metrics['seconds']:.1f} s: validation error "
                f"{run.metrics['val_error']:.1%}, test error {run.metrics['test_error']:.1%}")
        return {"run": row["id"]}

    return launch(store, session, "train", "Training", work, [row["id"]], {"run": row["id"]})


def start_scoring(store: Store, session: str, run_id: str, method: str,
                  exclude: list[str] | None = None) -> Job:
    """Score every training image of a finished run with one of the app's rankings
    (methods.keys(in_app=True)); `exclude`: validation images left out of the query."""
    ranking = methods.get(method, among=methods.keys(in_app=True))
    row = store.run(run_id)
    if row["status"] != DONE:
        raise RunError(f"run {run_id} is {row['status']}: train a model first")

    def work(job: Job) -> dict:
        begun = time.perf_counter()
        run = store.open_run(run_id)
        job.say(f"ranking the training images of run {run_id} by {ranking.title}")
        job.report(Progress(ranking.phase, 0, 1))
        effects = None
        if ranking.relabels:  # removal scores and relabel effects, one retrace
            frame, effects = relabel.rank_with_effects(run, method, job.report, exclude or ())
        else:
            frame = methods.rank(run, method, on_progress=job.report, exclude=exclude or ())
        seconds = time.perf_counter() - begun
        store.add_scores(run_id, method, frame, seconds,
                         exclude if ranking.estimates_removal else None, effects)
        job.say(f"scored {len(frame):,} training images in {seconds:.1f} s")
        return {"run": run_id, "method": method}

    return start(session, "score", f"Ranking by {ranking.title}", work,
                 result={"run": run_id, "method": method}, store=store, reads=[run_id])


TRUST = ("method", "n", "tau", "p_value", "sign_agreement", "groups", "group_size",
         "group_spearman", "group_p_value")  # what the trust check keeps


CHECK_GROUPS = 20  # random groups of 5 % of the training images in the trust check


def start_check(store: Store, session: str, run_id: str, method: str, n: int = 10,
                groups: int = CHECK_GROUPS) -> Job:
    """The engine's trust check: real retraining without n single images spread over the ranking
    and without `groups` random groups of 5 % of the training images, all at once."""
    methods.estimating_removal(method)  # refused here, before the job starts
    scores = store.scores(run_id, method)
    exclude = store.score_info(run_id)[method].get("query") or []

    def work(job: Job) -> dict:
        run = store.open_run(run_id)
        job.say(f"retraining without each of {n} single images and {groups} random groups, "
                "all at once, to compare with the estimates")
        result = trust.of_ranking(run, method, n, on_progress=job.report, ranked=scores,
                                  groups=groups, exclude=exclude)
        figures = {k: result[k] for k in TRUST if k in result}
        store.set_trust(run_id, method, figures)
        job.say(f"Kendall τ = {figures['tau']:.2f} over {figures['n']} images"
                + (f"; Spearman {figures['group_spearman']:.2f} over {figures['groups']} groups"
                   if "group_spearman" in figures else ""))
        return figures

    return start(session, "check", "Checking the ranking", work,
                 result={"run": run_id, "method": method}, store=store, reads=[run_id])


def start_curve(store: Store, session: str, run_id: str, method: str, mode: str = "last",
                controls: int = kcurve.CONTROLS, seed: int = 0) -> Job:
    """How many to remove: the k-curve of a computed ranking (influence.kcurve), every top-k
    and random removal in one vectorised retraining, judged on the run's selection images.
    The job's result keeps the curve per k (`band`) and the suggestion."""
    run = store.open_run(run_id)
    ranked = store.scores(run_id, method)
    kcurve.check_curve(run, ranked, mode, controls)  # refused here, before the job starts
    exclude = (store.score_info(run_id).get(method) or {}).get("query") or []

    def work(job: Job) -> dict:
        ks = kcurve.sizes(len(ranked))
        job.say(f"retraining without the top {', '.join(map(str, ks[1:]))} of the ranking and "
                f"without {controls} random sets of each size, all at once (mode {mode})")
        frame, found = kcurve.curve(run, ranked, mode, controls, seed, exclude=exclude,
                                    on_progress=job.report)
        job.say(found["sentence"])
        return {"band": kcurve.band(frame).to_dict("records"), "suggestion": found}

    return start(session, "curve", "Choosing how many to remove", work,
                 result={"run": run_id, "method": method, "mode": mode})


def start_cleaning(store: Store, session: str, run_id: str, remove_ids: list[str],
                   mode: str = "all", method: str | None = None,
                   controls: int = cleaning.CONTROLS, seed: int = 0,
                   fixes: dict[str, str] | None = None) -> Job:
    """A cleaning round: counterfactual retraining without `remove_ids` and with `fixes`
    (sample id → new label), saved as a run, and, as controls, as many random removals and
    random fixes `controls` times (in one vectorised run), with the statistics of
    influence.compare kept as the round's verdict."""
    if (job := active(session)) is not None:
        if job.kind == "clean":
            return job
        raise Busy(f"{job.title} is still running: wait for it to finish or cancel it")
    base_row = store.run(run_id)
    base = store.open_run(run_id)
    planned = cleaning.check_round(base, remove_ids, mode, controls, fixes)  # refused here,
    remove_ids, fixes = list(planned.changes.removed), dict(fixes or {})  # before the job starts
    exclude = (store.score_info(run_id).get(method) or {}).get("query") or []
    cleaned = store.new_run(base_row["dataset"], "cleaned", base.config, session, run_id)
    round_id = store.new_round(base_row["dataset"], run_id, method, mode, remove_ids,
                               cleaned["id"], None, session, fixes)

    def work(job: Job) -> dict:
        try:
            with tracked(store, cleaned["id"]):
                curve = job.training_log("retrain", base.schedule.epochs)
                job.say(f"{PHASES['retrain'].lower()} ({len(remove_ids)} images removed, "
                        f"{len(fixes)} fixed, mode {mode})")
                child, verdict = cleaning.run_round(
                    base, planned, seed, exclude, store.root / cleaned["folder"],
                    lambda p: job.report(p) if p.phase == "control" else curve(p))
                store.finish_run(cleaned["id"], DONE, child.metrics, config=child.config)
            job.say(f"test error {verdict['test_error_after']:.1%} (before: "
                    f"{verdict['test_error_before']:.1%}; {controls} random removals: "
                    f"{np.mean(verdict['control_errors'] or [np.nan]):.1%} on average)")
        except Cancelled:
            store.finish_round(round_id, CANCELLED)
            raise
        except BaseException:
            store.finish_round(round_id, FAILED)
            raise
        store.finish_round(round_id, DONE, verdict)
        return {"round": round_id, "cleaned": cleaned["id"]}

    try:
        return launch(store, session, "clean", "Retraining", work, [cleaned["id"]],
                      {"round": round_id, "cleaned": cleaned["id"]})
    except Busy:
        store.finish_round(round_id, CANCELLED)
        raise
