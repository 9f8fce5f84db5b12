"""The job runner: one registry of the app's background jobs per server process, and the backend
that runs them, chosen once when the app starts or connects to a cluster (app.services.cluster).

A job is long work (training, scoring, retraining, …) that makes no UI calls; the page reads its
progress, log and learning curves while it runs, and can cancel it. Jobs are keyed by a
browser-session id: a rerun, a page switch or a browser refresh (same session id) finds the
running job again instead of starting a second one, two browser sessions never see each other's
jobs, and one session runs one job at a time (Busy otherwise).

Where the work runs is the backend's business, behind one interface (Backend): `Threads`, the
default, runs it in a thread of this process; the Ray backend (app.services.ray_jobs) in an
actor on a cluster. Work started with the workspace store and the stored runs it reads and
creates may run on any backend; work started without a store runs in a thread here.

    start(session, kind, title, work, ...)  → Job   (Busy when the session runs another job)
    jobs_of(session), active(session), latest(session, kind), get(job_id)
    use(backend), backend(), adopt(job)             (for the backends and app.services.cluster)
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch

from datasets import DataError
from influence.progress import Cancelled, Progress
from influence.config import RunError
from influence.run_folder import TrainingLog
from influence.sgd import Diverged

from ..words import plain_message
from .store import CANCELLED, DONE, FAILED, RUNNING, Store

log = logging.getLogger(__name__)
KEEP_FINISHED = 10  # finished jobs kept per session, newest first


class Busy(RuntimeError):
    """This browser session already runs a job; the message names it."""


class Job:
    """One piece of long work; all fields are safe to read any time, from any thread."""

    def __init__(self, session: str, kind: str, title: str, job_id: str | None = None,
                 started: float | None = None):
        self.id = job_id or uuid.uuid4().hex[:10]
        self.session, self.kind, self.title = session, kind, title
        self.status = RUNNING
        self.phase, self.done, self.total = kind, 0, 0
        self.curves: dict[str, TrainingLog] = {}  # phase → live training log (loss, accuracy)
        self.epochs: dict[str, int] = {}  # phase → its number of epochs
        self.lines: list[str] = []
        self.result: dict = {}
        self.error: str | None = None
        self.suggested_lr: float | None = None
        self.started, self.finished = started or time.time(), None
        self.phase_started = self.started  # when the phase now reported began
        self.phase_done = 0  # its units done when it began (work done before it was reported)
        self._cancel, self._ended = threading.Event(), threading.Event()

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

    @property
    def phase_elapsed(self) -> float:
        """Seconds since the phase now reported began: its pace gives the time left."""
        return (self.finished or time.time()) - self.phase_started

    def curve(self, phase: str | None = None) -> pd.DataFrame:
        """The training log of a phase (default: the latest one) as a table, so far."""
        if not self.curves:
            return TrainingLog().frame()
        keep = self.curves.get(phase) or list(self.curves.values())[-1]
        return pd.DataFrame(list(keep.rows), columns=TrainingLog().frame().columns)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Has the user asked to cancel it (it may still be stopping)?"""
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> "Job":
        """Wait until the job has ended and its backend has put everything away."""
        self._ended.wait(timeout)
        return self

    # --- called by the work ----------------------------------------------------------------
    def say(self, line: str) -> None:
        self.lines.append(f"[{self.elapsed:6.1f} s] {line}")

    def report(self, p: Progress, phase: str | None = None) -> None:
        """The engine's progress callback; raising Cancelled here stops the work."""
        if self.cancelled:
            raise Cancelled()
        if (phase or p.phase) != self.phase or p.done < self.done:  # a new phase, its own pace
            self.phase_started, self.phase_done = time.time(), p.done
        self.phase, self.done, self.total = phase or p.phase, p.done, p.total
        if p.val is not None and phase in self.curves:
            self.say(epoch_line(self.curves[phase].rows, p.val, self.epochs.get(phase)))

    def training_log(self, phase: str, epochs: int) -> TrainingLog:
        """A fresh TrainingLog for a training phase, reporting to this job."""
        self.epochs[phase] = epochs
        self.curves[phase] = TrainingLog(lambda p: self.report(p, phase))
        return self.curves[phase]

    # --- called by the backend -------------------------------------------------------------
    def end(self, status: str, error: str | None = None,
            suggested_lr: float | None = None) -> None:
        """The job is over (done, failed or cancelled): the status is set last, so that a page
        that sees it finished finds everything else final."""
        self.error, self.suggested_lr = error, suggested_lr
        self.finished = time.time()
        self.status = status
        self._ended.set()


def epoch_line(rows: list[dict], val: dict, epochs: int | None) -> str:
    """One line of the text log at the end of an epoch."""
    epoch = val["epoch"] + 1
    mine = [r for r in rows if r["epoch"] == epoch]
    loss = np.mean([r["loss"] for r in mine]) if mine else float("nan")
    acc = np.mean([r["accuracy"] for r in mine]) if mine else float("nan")
    total = f" of {epochs}" if epochs else ""
    return (f"epoch {epoch}{total}: training loss {loss:.4f}, accuracy {acc:.1%} · "
            f"validation loss {val['val_loss']:.4f}, accuracy {val['val_accuracy']:.1%}")


def execute(job: Job, work: Callable[[Job], dict]) -> None:
    """Run `work(job)` in the calling thread and end the job with its outcome: its result, or
    the failure as one sentence (the full trace goes to the log), or cancelled."""
    if _threads is not None:
        torch.set_num_threads(_threads)
    status, error, suggested_lr = DONE, None, None
    try:
        job.result.update(work(job) or {})
    except Cancelled:
        status = CANCELLED
        job.say("cancelled; nothing of this job was kept")
    except Exception as e:  # every failure becomes a message
        status, error = FAILED, plain_message(e)
        suggested_lr = getattr(e, "suggested_lr", None)
        job.say(f"stopped: {error}")
        if not isinstance(e, (DataError, RunError, Diverged, OSError)):
            log.exception("job %s (%s) failed", job.id, job.kind)
    job.end(status, error, suggested_lr)


def use_cpu_threads(n: int | None = None) -> int:
    """Set torch's CPU threads for this process's jobs: $INFLUENCE_THREADS, else 1. The app's
    models are small: a second thread gains little, and on a busy machine OpenMP threads that
    spin waiting for each other make every step many times slower (benchmarks/flow.py measures
    both). Several jobs (one per browser session) then share the cores instead."""
    global _threads
    _threads = max(1, n or int(os.environ.get("INFLUENCE_THREADS") or 1))
    torch.set_num_threads(_threads)
    return torch.get_num_threads()


def cpu_threads() -> int:
    """The torch thread count of this process's jobs (use_cpu_threads), which a backend that
    runs them elsewhere passes on: results do not depend on where they were computed."""
    return _threads or torch.get_num_threads()


_threads: int | None = None  # set by use_cpu_threads; every job thread uses the same count, so
# that results do not depend on which thread computed them (float sums differ by thread count)


# --- backends ----------------------------------------------------------------------------------
class Backend(Protocol):
    """Where jobs run. `submit` starts a registered job's work and never raises: work that
    cannot start ends the job as failed, with the reason. Whatever happens, the backend ends
    the job with Job.end once it has put everything away; it stops the work when
    Job.cancelled."""

    def submit(self, job: Job, work: Callable[[Job], dict], store: Store, reads: list[str],
               owns: list[str]) -> None: ...

    def reattach(self, store: Store) -> list[Job]:
        """The jobs of this workspace that an earlier server process started and that still
        run, registered again (adopt) and followed."""


class Threads:
    """The default backend: each job in a thread of this process (a job ends with it)."""

    def submit(self, job: Job, work: Callable[[Job], dict], store: Store | None = None,
               reads: list[str] = (), owns: list[str] = ()) -> None:
        threading.Thread(target=execute, args=(job, work), daemon=True,
                         name=f"job-{job.kind}-{job.id}").start()

    def reattach(self, store: Store) -> list[Job]:
        return []  # nothing outlives this process


HERE = Threads()
_backend: Backend = HERE


def use(chosen: Backend | None) -> None:
    """Run the jobs started from now on with `chosen` (None: in threads here). Jobs already
    started stay with the backend that runs them."""
    global _backend
    _backend = chosen or HERE


def backend() -> Backend:
    return _backend


# --- the registry ------------------------------------------------------------------------------
_jobs: dict[str, Job] = {}
_lock = threading.Lock()


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
    """Run `work(job)` in the background, unless this session already runs a job: the same
    kind is found again (never duplicated; with `fresh`, Busy is raised instead), another kind
    raises Busy. Work given the workspace `store`, with the stored runs it `reads` and those it
    `owns` (creates), runs on the chosen backend, which may run it elsewhere; without a store it
    runs in a thread here."""
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
    if store is None:
        HERE.submit(job, work)
    else:
        _backend.submit(job, work, store, list(reads), list(owns))
    return job


def adopt(job: Job) -> Job:
    """Register a job that runs elsewhere and was started by an earlier server process (a
    backend re-attaching to it after a restart); the one registered already wins."""
    with _lock:
        return _jobs.setdefault(job.id, job)


def _prune(session: str) -> None:
    finished = sorted((j for j in _jobs.values() if j.session == session and not j.running),
                      key=lambda j: j.started, reverse=True)
    for old in finished[KEEP_FINISHED:]:
        del _jobs[old.id]
