"""Jobs on a real local Ray cluster (no mocks): training, scoring, the trust check, cleaning, the
k-curve and explaining a mistake run in detached job actors and give bit for bit what the threads
give; Cancel stops them; a restarted app re-attaches to a job that kept running;
counterfactual.outcomes's chunks and the benchmarks' splits fan out as tasks with the same
figures. Without a cluster configured, the app never imports Ray."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

import datasets
from app.services import cluster, explaining, jobs, ray_jobs, runner
from app.services import store as stores
from app.services.store import CANCELLED, DONE, INTERRUPTED, RUNNING, Store
from influence import run_folder, runs
from influence.counterfactual import outcomes
from influence.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
FAST = dict(model="logreg", epochs=3, batch_size=64)
SAME_FILES = ("config.json", "checkpoints.safetensors", "weights.safetensors",
              "schedule.safetensors", "log.csv", "predictions.csv")


@pytest.fixture(scope="module")
def address():
    """A local Ray cluster of 2 CPUs for this module; its address, as RAY_ADDRESS would give."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env=ray_jobs.RUNTIME_ENV)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, address):
    """A workspace whose jobs run on the cluster (as after Connect on the data page)."""
    runner.use_cpu_threads()
    root = tmp_path_factory.mktemp("ws")
    cluster.connect(address, root)
    yield Store(root)
    cluster.disconnect(root)
    stores.register_owner("ray", None)


@pytest.fixture(scope="module")
def digits_id(ws):
    return ws.add_dataset(datasets.load("digits"), "digits", "s")["id"]


def here(start, *args, **kwargs) -> runner.Job:
    """Start a job in a thread of this process, as without a cluster."""
    chosen = runner.backend()
    runner.use(None)
    try:
        return start(*args, **kwargs)
    finally:
        runner.use(chosen)


def actors(store: Store) -> list[str]:
    space = ray_jobs.namespace(store)
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == space]


def test_every_kind_of_job_on_ray_gives_what_the_threads_give_bit_for_bit(ws, digits_id):
    """Each kind of job twice at once, on the cluster (session "ray") and here ("here")."""
    config = RunConfig(**FAST)
    far = jobs.start_training(ws, "ray", digits_id, config)
    assert ws.run(far.result["run"])["owner"].startswith("ray:")  # handed to its job actor
    near = here(jobs.start_training, ws, "here", digits_id, config).wait(300)
    far.wait(300)
    assert (far.status, near.status) == (DONE, DONE), (far.error, near.error)
    assert far.done == far.total == near.total and len(far.curve("train")) == near.total
    assert any("epoch 3 of 3" in line for line in far.lines)
    a, b = far.result["run"], near.result["run"]
    for name in SAME_FILES:
        assert (ws.run_folder(a) / name).read_bytes() == (ws.run_folder(b) / name).read_bytes(), \
            name
    drop = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert drop(ws.run(a)["metrics"]) == drop(ws.run(b)["metrics"])

    far = jobs.start_scoring(ws, "ray", a, "sgd")
    near = here(jobs.start_scoring, ws, "here", b, "sgd").wait(300)
    assert (far.wait(300).status, near.status) == (DONE, DONE), (far.error, near.error)
    pd.testing.assert_frame_equal(ws.scores(a, "sgd"), ws.scores(b, "sgd"))
    assert (ws.run_folder(a) / "influence-sgd.csv").read_bytes() == \
        (ws.run_folder(b) / "influence-sgd.csv").read_bytes()

    check = jobs.start_check(ws, "ray", a, "sgd", n=4, groups=3)
    here(jobs.start_check, ws, "here", b, "sgd", n=4, groups=3).wait(300)
    assert check.wait(300).status == DONE, check.error
    assert ws.score_info(a)["sgd"]["trust"] == ws.score_info(b)["sgd"]["trust"]

    remove = ws.open_run(a).train_ids[:5]
    clean = jobs.start_cleaning(ws, "ray", a, remove, "all", "sgd", controls=3)
    local = here(jobs.start_cleaning, ws, "here", b, remove, "all", "sgd", controls=3).wait(300)
    assert clean.wait(300).status == DONE, clean.error
    far_round, near_round = ws.round(clean.result["round"]), ws.round(local.result["round"])
    assert far_round["status"] == DONE and far_round["verdict"] == near_round["verdict"]
    c, d = far_round["cleaned"], near_round["cleaned"]
    assert ws.run(c)["status"] == DONE and ws.run(c)["parent"] == a
    for name in SAME_FILES[1:]:  # config.json names its parent run's folder
        assert (ws.run_folder(c) / name).read_bytes() == (ws.run_folder(d) / name).read_bytes()
    parent = json.loads((ws.run_folder(c) / "config.json").read_text())["parent"]
    assert parent == str(ws.run_folder(a))  # the app's folder, not the worker's copy

    curve = jobs.start_curve(ws, "ray", a, "sgd", "last", controls=2)
    local = here(jobs.start_curve, ws, "here", b, "sgd", "last", controls=2).wait(300)
    assert (curve.wait(300).status, local.status) == (DONE, DONE), (curve.error, local.error)
    assert any("sent to the Ray cluster" in line for line in curve.lines)
    pd.testing.assert_frame_equal(pd.DataFrame(curve.result["band"]),
                                  pd.DataFrame(local.result["band"]))
    assert json.dumps(curve.result["suggestion"]) == json.dumps(local.result["suggestion"])

    test_id = ws.predictions(a).query("part == 'test'").sample_id.iloc[0]
    for start, kept in ((explaining.start_explain, ws.explanation),
                        (explaining.start_explain_check, ws.explanation_trust)):
        far = start(ws, "ray", a, test_id, "sgd-last")
        near = here(start, ws, "here", b, test_id, "sgd-last").wait(300)
        assert (far.wait(300).status, near.status) == (DONE, DONE), (far.error, near.error)
        assert any("sent to the Ray cluster" in line for line in far.lines)
        mine, theirs = kept(a, test_id, "sgd-last"), kept(b, test_id, "sgd-last")
        assert mine is not None  # written into the app's run folder, from the actor's writes
        if isinstance(mine, dict):
            assert mine == theirs
        else:
            pd.testing.assert_frame_equal(mine, theirs)
    assert actors(ws) == []  # every job actor ended once its results were collected


def test_cancel_stops_the_job_on_the_cluster_and_keeps_nothing(ws, digits_id):
    job = jobs.start_training(ws, "cancel", digits_id, RunConfig(model="logreg",
                                                                 epochs=1000))
    deadline = time.time() + 120
    while job.done == 0 and time.time() < deadline:
        time.sleep(0.2)
    assert job.running and job.done > 0 and job.curve("train").shape[0] > 0  # live progress
    job.cancel()
    job.wait(120)
    assert job.status == CANCELLED
    row = ws.run(job.result["run"])
    assert row["status"] == CANCELLED and not ws.run_folder(row["id"]).exists()
    assert actors(ws) == []


def test_a_run_whose_job_actor_is_gone_is_marked_interrupted(ws, digits_id):
    row = ws.new_run(digits_id, "train", RunConfig(**FAST), "gone")
    ws.set_owner(row["id"], f"ray:{ray_jobs.namespace(ws)}/job-nosuchjob")
    assert Store(ws.root).run(row["id"])["status"] == INTERRUPTED


def test_an_address_given_on_the_data_page_is_kept_for_the_next_start(ws, address, tmp_path,
                                                                      monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.configured_address(tmp_path) is None
    try:
        info = cluster.connect(address, tmp_path, remember=True)  # the data page's Connect
        assert (info["cpus"], info["gpus"], info["nodes"]) == (2, 0, 1)
        assert cluster.configured_address(tmp_path) == address  # in the workspace's cluster.json
        assert cluster.status()["connected"] and not cluster.status()["from_environment"]
        cluster.disconnect(tmp_path)  # "Run new jobs here again"
        assert runner.backend() is runner.HERE and cluster.configured_address(tmp_path) is None
    finally:
        cluster.connect(address, ws.root)  # this module's workspace runs on the cluster again


RESTARTED = """
import sys, time
from pathlib import Path
from app.services import cluster, jobs, runner
from app.services.store import Store
from influence.config import RunConfig
import datasets
runner.use_cpu_threads()
cluster.start(Path(sys.argv[1]))  # RAY_ADDRESS is set: jobs go to the cluster
ws = Store(sys.argv[1])
d = ws.add_dataset(datasets.load("digits"), "digits", "x")
started = jobs.start_training(ws, "x", d["id"], RunConfig(model="logreg", epochs=300))
while started.done == 0 and started.running:
    time.sleep(0.1)
late = jobs.start_training(ws, "y", d["id"], RunConfig(model="logreg", epochs=50))
for job in (started, late):
    print(job.id, job.result["run"], job.error, job.done, flush=True)
time.sleep(600)  # killed by now: the second job had at most just reached its worker
"""


def test_a_restarted_app_reattaches_to_its_jobs_and_collects_them(ws, address, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", RESTARTED, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": address})
    try:
        (first, run_id, error, done), (second, late_run, late_error, _) = \
            proc.stdout.readline().split(), proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)  # the web server dies; its job actors do not
        proc.wait(30)
    assert error == late_error == "None"
    assert int(done) > 0  # the first was training when the server died
    assert runner.get(first) is None and runner.get(second) is None  # nothing of them here yet
    restarted = Store(tmp_path)  # the next server start: recover() sees the actors alive
    assert restarted.run(run_id)["status"] == restarted.run(late_run)["status"] == RUNNING
    cluster.reattach(tmp_path)
    deadline = time.time() + 120
    while any(runner.get(i) is None or not runner.get(i).lines for i in (first, second)) \
            and time.time() < deadline:
        time.sleep(0.2)
    job = runner.get(first)
    assert job.session == "x" and job.kind == "train" and runner.jobs_of("x") == [job]
    assert job.lines  # its progress so far (then live, unless it has ended meanwhile)
    for job_id, run, epochs in ((first, run_id, 300), (second, late_run, 50)):
        job = runner.get(job_id).wait(300)
        assert job.status == DONE, job.error
        assert job.done == job.total == epochs * 17 and len(job.curve("train")) == job.total
        row = restarted.run(run)
        assert row["status"] == DONE and row["metrics"]["epochs"] == epochs
        assert run_folder.load(restarted.run_folder(run)).metrics == row["metrics"]
    assert runner.get(second).session == "y"
    assert actors(restarted) == []


def test_outcome_chunks_as_ray_tasks_give_the_local_figures(ws, digits_id):
    run = runs.Run(RunConfig(**FAST), ws.load_data(digits_id))
    run.train()
    removals = [run.train_ids[k:k + 3] for k in range(0, 27, 3)]
    labels = run.objective.y.tolist()  # random-control style: each set also fixes one label
    fixes = [{run.train_ids[k + 30]: (labels[k + 30] + 1) % 10} for k in range(0, 27, 3)]
    local, seen = outcomes(run, removals, "all", chunk=4, fixes=fixes), []
    run.outcome_executor = ray_jobs.outcomes_on_cluster
    fanned = outcomes(run, removals, "all", chunk=4, fixes=fixes,
                      on_progress=lambda p: seen.append(p.done))
    run.outcome_executor = None
    per_chunk = run.schedule.steps
    assert seen == [per_chunk, 2 * per_chunk, 3 * per_chunk]  # one report per chunk: tasks
    pd.testing.assert_frame_equal(fanned, local)
    unfixed = outcomes(run, removals[:1], "all")
    assert unfixed.query_loss[0] != local.query_loss[0]  # the fixes went along


def test_benchmark_splits_as_ray_tasks_give_the_same_rows(address, tmp_path):
    def cleansing(out, *extra):  # both at once: the Ray one mostly waits for its tasks
        out.mkdir()
        with open(out / "stderr.txt", "w") as stderr:
            return subprocess.Popen([sys.executable, "-W", "ignore", "benchmarks/cleansing.py",
                                     "--quick", "--epochs", "2", "--methods", "random",
                                     "--out", str(out), *extra], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=stderr)

    def rows(proc, out):
        assert proc.wait(600) == 0, (out / "stderr.txt").read_text()[-3000:]
        return pd.read_csv(out / "cleansing-quick.csv").drop(columns="score_seconds")

    far, near = cleansing(tmp_path / "ray", "--ray", address), cleansing(tmp_path / "here")
    fanned, local = rows(far, tmp_path / "ray"), rows(near, tmp_path / "here")
    assert sorted(set(local.split)) == [0, 1]
    pd.testing.assert_frame_equal(fanned, local)


NO_CLUSTER = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app/main.py", default_timeout=120).run()
for page in ("views/train.py", "views/harmful.py", "views/retrain.py", "views/data.py"):
    at.switch_page(page).run()
    assert not at.exception, at.exception
assert "Advanced: run the jobs on a Ray cluster" in [e.label for e in at.expander]
from app.services import runner
assert runner.backend() is runner.HERE and "ray" not in sys.modules, \
    sorted(m for m in sys.modules if m.startswith("ray"))
"""


def test_without_a_cluster_the_app_never_imports_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", NO_CLUSTER], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**env, "PYTHONPATH": str(ROOT),
                                                       "INFLUENCE_WORKSPACE": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
