"""The Ray backend of the job runner (app.services.runner): the same work as in the app's own
threads, each job in a detached named actor, so that a restart of the web server neither stops
the job nor loses it.

What runs where
    the app (this process)  submits a job, polls its progress, log and curves into the same Job
                            the pages read, cancels it, and writes its results into the workspace
    a job actor (a worker)  runs the job's work: training, scoring, the trust check, the k-curve,
                            cleaning, explaining a mistake and checking that explanation
    chunk tasks (workers)   the chunks of removal masks of counterfactual.outcomes (trust check,
                            controls, k-curve) when there are several chunks and the cluster has
                            room

A job's work (a closure made by app.services.jobs or app.services.explaining) is pickled with
the workspace store replaced by a placeholder, a stored run by its id and a run not trained yet
by its config and data. The worker gets its own WorkerStore: a store in a temporary folder
holding copies of the rows and folders the job reads, which records what the job writes. When
the job ends, the app unpacks the run folders it made (sent back as bytes, so the workers need
no shared file system) and replays the recorded writes on its store; then it ends the actor.
The actor is named after the job, in a namespace of the workspace, and the runs it creates are
owned by it in the store ("ray:<namespace>/<name>"), so a restarted app finds it again
(Backend.reattach) instead of marking its runs interrupted. The runs a job opens on a worker
hand their chunks of counterfactual retraining to Ray as tasks (Run.outcome_executor =
outcomes_on_cluster). On the CPU, results are bit for bit those of the threads here (same code,
same torch thread count; a job there uses the one CPU Ray gives it, and the workers that share
the masks here do not change the bits: influence.sgd.shares).

Imported only when a cluster is configured (app.services.cluster): the app never imports Ray
otherwise.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import ray
import torch
from ray import cloudpickle

from datasets import DataError, ImageSet
from datasets.storage import atomic_folder
from influence import counterfactual, run_folder, runs
from influence.progress import Cancelled
from influence.config import RunConfig, RunError

from ..words import plain_message
from . import runner
from .store import CANCELLED, FAILED, RUNNING, Store

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
# the project's code goes to the workers with every job (no shared file system needed); the
# workers need the same Python and packages (requirements.txt)
RUNTIME_ENV = {"py_modules": [str(ROOT / name) for name in ("app", "influence", "datasets")],
               "excludes": ["__pycache__", "*.pyc"]}
POLL_SECONDS = 0.5
RECORDED = ("finish_run", "add_scores", "set_trust", "finish_round", "add_explanation",
            "set_explanation_trust")  # the store writes a job may make


def namespace(store: Store) -> str:
    """The Ray namespace of a workspace's jobs: its folder on this machine."""
    key = f"{socket.gethostname()}:{store.root.resolve()}"
    return "sgd-influence-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def connect(address: str | None) -> Backend:
    """Connect this process to the Ray cluster at `address` (host:port of its head node, or
    "auto" for the one running on this machine), unless it is connected already."""
    if not ray.is_initialized():
        if address != "auto":
            reachable(address)
        try:
            ray.init(address=address, runtime_env=RUNTIME_ENV, log_to_driver=False,
                     logging_level=logging.WARNING)
        except ConnectionError as e:
            raise ConnectionError(
                f"the Ray cluster at {address!r} did not accept this app ({e}). If it uses "
                "token authentication (Ray's default), put its token (`ray get-auth-token` on "
                "the head node) into ~/.ray/auth_token here or into RAY_AUTH_TOKEN") from None
    return Backend()


def reachable(address: str | None) -> None:
    """ConnectionError at once when nothing listens at host:port (ray.init would wait for
    minutes)."""
    host, _, port = (address or "").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"no Ray cluster answers at {address!r} ({e}). Give the address "
                              "of its head node as host:port (e.g. 10.0.0.5:6379), as "
                              "`ray start --head` prints it") from None


# --- the app's side ------------------------------------------------------------------------------
class Backend:
    """The runner's backend (runner.Backend) for the cluster this process is connected to."""

    def resources(self) -> dict:
        total = ray.cluster_resources()
        return {"cpus": int(total.get("CPU", 0)), "gpus": int(total.get("GPU", 0)),
                "nodes": sum(node["Alive"] for node in ray.nodes())}

    def owner_alive(self, name: str) -> bool:
        """The store's owner check of "ray" (store.register_owner): does the job actor
        `<namespace>/<name>` still live?"""
        space, _, actor = name.partition("/")
        try:
            ray.get_actor(actor, namespace=space)
        except ValueError:
            return False
        return True

    def submit(self, job: runner.Job, work, store: Store, reads: list[str],
               owns: list[str]) -> None:
        """Start `work` in a new job actor and follow it from a thread of this process. Never
        raises: a job that cannot be submitted fails with the reason."""
        space, name = namespace(store), f"job-{job.id}"
        try:
            spec = {"id": job.id, "session": job.session, "kind": job.kind, "title": job.title,
                    "result": dict(job.result), "started": job.started, "owns": owns,
                    "threads": runner.cpu_threads(),
                    **ship(work, store, reads, owns)}
            for run_id in owns:
                store.set_owner(run_id, f"ray:{space}/{name}")
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            actor = JobActor.options(name=name, namespace=space, lifetime="detached",
                                     num_cpus=1, num_gpus=gpus).remote(spec)
        except Exception as e:  # e.g. an unreadable run folder, the cluster gone
            job.end(*failed(job, store, owns, e))
            return
        job.say(f"sent to the Ray cluster (a {'GPU' if gpus else 'CPU'} worker)")
        follow(job, actor, store, spec)

    def reattach(self, store: Store) -> list[runner.Job]:
        """Find the job actors of this workspace that an earlier server process started, and
        follow them again: their jobs are back in the registry, with their progress so far.
        Returns those found at once; an actor still waiting for a worker joins when it has
        one."""
        space, found = namespace(store), []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != space or runner.get(entry["name"][len("job-"):]):
                continue
            try:
                actor = ray.get_actor(entry["name"], namespace=space)
            except ValueError:  # it ended meanwhile
                continue
            described = actor.describe.remote()
            if ray.wait([described], timeout=10)[0]:
                found += adopt(actor, store, described)
            else:
                threading.Thread(target=adopt, args=(actor, store, described),
                                 daemon=True).start()
        return found


def adopt(actor, store: Store, described) -> list[runner.Job]:
    """Register the job of a job actor in this process and follow it."""
    try:
        spec = ray.get(described)
    except Exception as e:  # it ended meanwhile
        log.info("a job actor is gone: %s", e)
        return []
    job = runner.Job(spec["session"], spec["kind"], spec["title"], spec["id"], spec["started"])
    job.result.update(spec["result"])
    if runner.adopt(job) is not job:
        return []
    follow(job, actor, store, spec)
    return [job]


def follow(job: runner.Job, actor, store: Store, spec: dict) -> None:
    threading.Thread(target=_follow, args=(job, actor, store, spec), daemon=True,
                     name=f"ray-{job.kind}-{job.id}").start()


def _follow(job: runner.Job, actor, store: Store, spec: dict) -> None:
    """Mirror the actor's progress into `job` until it ends (first sending it the folders its
    work reads, unless an earlier server process did), pass a Cancel on, then collect the
    results into the store, end the actor, and end the job."""
    owns, seen, started, asked = spec["owns"], {"lines": 0, "rows": {}}, False, False
    try:
        while True:
            state = _get(actor.poll.remote(seen["lines"], seen["rows"]), job, started)
            if not state["started"]:  # the work is in the actor's spec, the folders are here
                _get(actor.start.remote({folder: pack(store.root / folder)
                                         for folder in spec["folders"]}), job, started)
                continue
            started = True
            if job.cancelled and not asked:
                actor.cancel.remote()
                asked = True
            mirror(job, state, seen)
            if state["ended"]:
                break
            time.sleep(POLL_SECONDS)
        end = ray.get(actor.outcome.remote(), timeout=600)
        collect(store, end, owns)
        job.lines.extend(end["lines"][seen["lines"]:])
        job.phase, job.done, job.total = end["phase"], end["done"], end["total"]
        job.result.update(end["result"])
        outcome = end["status"], end["error"], end["suggested_lr"]
    except Cancelled:
        outcome = closed(job, store, owns, CANCELLED, "cancelled before it started")
    except Exception as e:
        outcome = failed(job, store, owns, e)
    finally:
        close(actor)
    job.end(*outcome)  # last: a page that sees it finished finds the store ready


def _get(ref, job: runner.Job, started: bool):
    """ray.get(ref), waiting as long as it takes (no free worker yet, a worker starting), unless
    the user cancels a job that has not started."""
    while not ray.wait([ref], timeout=POLL_SECONDS)[0]:
        if job.cancelled and not started:
            raise Cancelled()
    return ray.get(ref)


def mirror(job: runner.Job, state: dict, seen: dict) -> None:
    """Copy what the actor reported since the last poll into the app's Job."""
    job.epochs.update(state["epochs"])
    for phase, rows in state["rows"].items():
        curve = job.curves.setdefault(phase, run_folder.TrainingLog())
        curve.rows.extend(rows)
        seen["rows"][phase] = len(curve.rows)
    job.lines.extend(state["lines"])
    seen["lines"] += len(state["lines"])
    job.phase, job.done, job.total = state["phase"], state["done"], state["total"]


def collect(store: Store, end: dict, owns: list[str]) -> None:
    """Unpack the run folders a job made into the workspace, then replay its store writes."""
    allowed = {store.run(run_id)["folder"] for run_id in owns}
    for folder, blob in end["folders"].items():
        if folder not in allowed:
            raise RuntimeError(f"the job sent back an unexpected folder {folder!r}")
        if not (store.root / folder).exists():
            unpack(blob, store.root / folder)
    for name, args, kwargs in end["calls"]:
        if name not in RECORDED:
            raise RuntimeError(f"the job asked for an unexpected store change {name!r}")
        getattr(store, name)(*args, **kwargs)


def failed(job: runner.Job, store: Store, owns: list[str], error: Exception) -> tuple:
    error = getattr(error, "cause", None) or error  # a task's own error, not Ray's wrapper
    lines = str(error).strip().splitlines()
    message = plain_message(error) if isinstance(error, (DataError, RunError)) else \
        f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return closed(job, store, owns, FAILED, f"the job stopped on the Ray cluster: {message}")


def closed(job: runner.Job, store: Store, owns: list[str], status: str, message: str) -> tuple:
    """Close the runs and the cleaning round of a job the actor could not finish; the job's
    ending (status, error, suggested learning rate) for Job.end."""
    try:
        for run_id in owns:
            if store.run(run_id)["status"] == RUNNING:
                store.finish_run(run_id, status, error=message)
        for row in store.rounds():
            if row["status"] == RUNNING and row["cleaned"] in owns:
                store.finish_round(row["id"], status)
    except Exception:  # the store itself fails: the page shows the job's message anyway
        log.exception("closing the runs of job %s", job.id)
    job.say(message)
    return status, message if status == FAILED else None, None


def close(actor) -> None:
    """End a job actor (its temporary folder first)."""
    try:
        ray.get(actor.close.remote(), timeout=30)
    except Exception:
        pass
    try:
        ray.kill(actor)
    except Exception:
        pass


# --- what goes to the worker ---------------------------------------------------------------------
class _Sender(cloudpickle.CloudPickler):
    """Pickles a job's work for a worker: the workspace store becomes a placeholder, a stored run
    or data set its id (its folder travels with the job), a run not trained yet its config and
    data. The work itself then stays small (kept by Ray with the actor, whatever the app does)."""

    def __init__(self, file, store: Store):
        super().__init__(file)
        self.store, self.runs, self.datasets = store, set(), set()
        self.runs_folder = (store.root / "runs").resolve()
        self.fingerprints = {row["fingerprint"]: row["id"] for row in store.datasets()}

    def persistent_id(self, obj):
        if obj is self.store:
            return ("store",)
        if isinstance(obj, ImageSet) and (found := self.fingerprints.get(obj.fingerprint())):
            self.datasets.add(found)
            return ("dataset", found)
        if isinstance(obj, runs.Run):
            if obj.path is not None and Path(obj.path).resolve().parent == self.runs_folder:
                self.runs.add(Path(obj.path).name)
                return ("run", Path(obj.path).name)
            if not obj.checkpoints:
                return ("plan", asdict(obj.config), obj.data)
        return None


class _Receiver(pickle.Unpickler):
    def __init__(self, file, store: WorkerStore):
        super().__init__(file)
        self.store = store

    def persistent_load(self, pid):
        if pid[0] == "store":
            return self.store
        if pid[0] == "run":
            return self.store.open_run(pid[1])
        if pid[0] == "dataset":
            return self.store.load_data(pid[1])
        if pid[0] == "plan":
            return runs.Run(RunConfig(**pid[1]), pid[2])
        raise pickle.UnpicklingError(f"unknown placeholder {pid[0]!r}")


def ship(work, store: Store, reads: list[str], owns: list[str]) -> dict:
    """What a job's worker needs besides the folders: the pickled work and the rows of the runs
    it reads or creates (and of their data sets and scores); and which folders it needs: those
    of the runs it reads and of their data sets (sent as bytes when the actor starts)."""
    buffer = io.BytesIO()
    sender = _Sender(buffer, store)
    sender.dump(work)
    reads = list(dict.fromkeys([*reads, *sorted(sender.runs)]))
    run_rows = [store.run(run_id) for run_id in dict.fromkeys(reads + owns)]
    data_rows = {i: store.dataset(i) for i in {r["dataset"] for r in run_rows} | sender.datasets}
    needed = {store.run(run_id)["dataset"] for run_id in reads} | sender.datasets
    folders = [store.run(run_id)["folder"] for run_id in reads] + \
        [data_rows[i]["folder"] for i in sorted(needed)]
    scores = [info for run_id in reads for info in store.score_info(run_id).values()]
    return {"work": buffer.getvalue(), "app_root": str(store.root), "folders": folders,
            "rows": {"datasets": list(data_rows.values()), "runs": run_rows, "scores": scores}}


def pack(folder: Path) -> bytes:
    """A folder as an uncompressed tar in memory (weights do not compress)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".", filter=lambda info: None if Path(info.name).name.startswith(
            ".") and info.name != "." else info)  # not a half-written file of another job
    return buffer.getvalue()


def unpack(blob: bytes, target: Path) -> None:
    """pack()'s bytes as the folder `target`, written atomically."""
    with atomic_folder(target) as tmp, tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")


# --- the worker's side ---------------------------------------------------------------------------
def _recorded(name: str):
    def write(self, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        return getattr(Store, name)(self, *args, **kwargs)
    write.__name__ = name
    return write


class WorkerStore(Store):
    """A job's store on a worker: copies of the rows and folders it reads, in a temporary
    folder. The writes a job may make (RECORDED) are kept in `calls` for the app to replay."""

    def __init__(self, root: Path, app_root: str):
        super().__init__(root)
        self.app_root, self.calls = Path(app_root), []

    def open_run(self, run_id: str, data=None) -> runs.Run:
        run = super().open_run(run_id, data)
        run.path = self.app_root / self.run(run_id)["folder"]  # as in the app: a child run
        # records its parent by it; its retrainings fan out as tasks
        run.outcome_executor = outcomes_on_cluster
        return run

    finish_run = _recorded("finish_run")
    add_scores = _recorded("add_scores")
    set_trust = _recorded("set_trust")
    finish_round = _recorded("finish_round")
    add_explanation = _recorded("add_explanation")
    set_explanation_trust = _recorded("set_explanation_trust")

    def _refuse(self, *_, **__):
        raise RunError("a job on a cluster worker cannot add data sets, runs or rounds to "
                       "the workspace")

    add_dataset = new_run = new_round = save_session_state = _refuse


@ray.remote(max_restarts=0)
class JobActor:
    """One job on a worker: runs it in a thread, holds its progress, log and results until the
    app collects them (then the app ends the actor)."""

    def __init__(self, spec: dict):
        self.spec, self.job, self.thread, self.store = spec, None, None, None
        self.root = Path(tempfile.mkdtemp(prefix="sgd-influence-job-"))

    def describe(self) -> dict:
        return self.spec

    def start(self, folders: dict[str, bytes]) -> None:
        """Unpack the folders the work reads and start it (once)."""
        if self.job is not None:
            return
        spec = self.spec
        runner.use_cpu_threads(spec["threads"])  # as in the app: the same float sums
        os.environ["INFLUENCE_WORKERS"] = "1"  # the one CPU Ray gave it (the same bits)
        self.store = WorkerStore(self.root / "workspace", spec["app_root"])
        for table in ("datasets", "runs", "scores"):
            self.store.insert_rows(table, spec["rows"][table])
        for folder, blob in folders.items():
            unpack(blob, self.store.root / folder)
        job = runner.Job(spec["session"], spec["kind"], spec["title"], spec["id"])
        job.result.update(spec["result"])

        def work(job: runner.Job) -> dict:
            return _Receiver(io.BytesIO(spec["work"]), self.store).load()(job)

        self.job = job
        self.thread = threading.Thread(target=runner.execute, args=(job, work), daemon=True)
        self.thread.start()

    def poll(self, lines: int, rows: dict[str, int]) -> dict:
        """What changed since the app saw `lines` log lines and `rows` curve rows per phase."""
        job = self.job
        if job is None:
            return {"started": False, "ended": False}
        ended = not self.thread.is_alive()  # first: then everything below is final
        return {"started": True, "ended": ended, "phase": job.phase, "done": job.done,
                "total": job.total, "epochs": dict(job.epochs), "lines": job.lines[lines:],
                "rows": {phase: curve.rows[rows.get(phase, 0):]
                         for phase, curve in list(job.curves.items())}}

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def outcome(self) -> dict:
        """The ended job: its fields, the run folders it made (as bytes) and its store writes."""
        job = self.job
        made = [row["folder"] for row in map(self.store.run, self.spec["owns"])
                if (self.store.root / row["folder"]).is_dir()]
        return {"status": job.status, "error": job.error, "suggested_lr": job.suggested_lr,
                "result": job.result, "lines": job.lines, "phase": job.phase,
                "done": job.done, "total": job.total, "calls": self.store.calls,
                "folders": {folder: pack(self.store.root / folder) for folder in made}}

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- fan-out: the chunks of counterfactual.outcomes as tasks ------------------------------------
@ray.remote
def _outcome_chunk(run: runs.Run, chunk: tuple[list, list], mode: str, exclude: list[str],
                   threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    os.environ["INFLUENCE_WORKERS"] = "1"  # the one CPU Ray gave it (the same bits)
    removals, fixes = chunk
    return counterfactual.outcome_rows(run, removals, mode, exclude, None, fixes)


def outcomes_on_cluster(run: runs.Run, chunks: list, mode: str, exclude: list[str]):
    """A run's outcome_executor on a cluster: each chunk of removal masks as a Ray task (with
    the caller's torch thread count, so each chunk's figures are the local ones), when the
    cluster has more than the one CPU this job holds; None (keep them here) otherwise."""
    if ray.cluster_resources().get("CPU", 0) < 2:
        return None
    return _gathered(run, chunks, mode, exclude)


def _gathered(run: runs.Run, chunks: list, mode: str, exclude: list[str]):
    shared = ray.put(run)
    gpus = 1 if run.device.type == "cuda" else 0
    refs = [_outcome_chunk.options(num_cpus=1, num_gpus=gpus).remote(
        shared, chunk, mode, exclude, torch.get_num_threads()) for chunk in chunks]
    taken = 0
    try:
        for ref in refs:
            yield ray.get(ref)
            taken += 1
    finally:  # stopped early (cancelled, failed): the chunks still running stop too
        left = refs[taken:]
        finished = set(ray.wait(left, num_returns=len(left), timeout=0)[0]) if left else set()
        for ref in left:
            if ref not in finished:
                ray.cancel(ref)
