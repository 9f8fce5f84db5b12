"""Work shared among the CPU cores: counterfactual SGD with its masks split among threads, the
replay run one epoch ahead of the retrace in a thread, the probe's rates split among threads.
Each gives the same bits as one thread doing it all (shares cut at vmap chunks), a failure or a
cancellation in any thread stops the others, progress counts up whichever thread reports, and
one model is safe to use from many threads."""
import sys
import threading

import pandas as pd
import pytest
import torch

from influence import counterfactual, probe
from influence.config import RunConfig, RunError, workers
from influence.runs import Run
from influence.progress import HeldBack, Progress, counted
from influence.sgd import Objective, counterfactual_sgd, in_parallel, shares
from influence.sgd_influence import retrace


@pytest.fixture(scope="module")
def small_cnn():
    """The small CNN on the digits, 2 epochs: convolutions, max pooling, several parameters."""
    run = Run(RunConfig(dataset="digits", model="cnn-small", epochs=2, memory_mb=1024))
    run.train()
    return run


def switching_often(targets) -> None:
    """Each function in a thread of its own, all at once, the interpreter switching threads as
    often as it can (races show)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target) for target in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


def identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_shares_are_whole_vmap_chunks_and_cover_every_mask_once():
    assert shares(13, 2, 1) == [slice(0, 7), slice(7, 13)]
    assert shares(13, 2, 4) == [slice(0, 8), slice(8, 13)]
    assert shares(5, 8, 1) == [slice(k, k + 1) for k in range(5)]
    assert shares(1, 2, 1) == [slice(0, 1)]
    assert shares(13, 2) == [slice(0, 13)]  # one vmap over every mask: not cut
    for m, w, c in [(13, 3, None), (32, 2, 1), (7, 4, 2), (32, 5, 8)]:
        parts = shares(m, w, c)
        assert len(parts) <= w and parts[0].start == 0 and parts[-1].stop == m
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert all((p.stop - p.start) % c == 0 for p in parts[:-1]) if c else True


def test_one_model_gives_each_thread_its_own_parameters(small_cnn):
    """functional_call swaps a module's parameters while it runs: without a copy per thread two
    threads computing on one model at two θ saw each other's (or failed inside vmap)."""
    obj = small_cnn.objective
    thetas = [small_cnn.checkpoints[0], small_cnn.theta]
    idx = torch.arange(64)
    alone = [obj.weighted(theta, torch.full((64,), 1 / 64), idx)[0] for theta in thetas]
    together, errors = [None, None], []

    def compute(i):
        try:
            for _ in range(30):
                value = obj.weighted(thetas[i], torch.full((64,), 1 / 64), idx)[0]
                assert torch.equal(value, alone[i])
            together[i] = value
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=compute, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not torch.equal(alone[0], alone[1])


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_masks_shared_among_threads_give_each_share_its_own_bits(small_cnn, chunk):
    run = small_cnn
    n = len(run.train_ids)
    keeps = torch.ones(5, n, dtype=torch.bool)
    for m in range(5):
        keeps[m, m * 40:(m + 1) * 40] = False
    one = counterfactual_sgd(run.objective, run.schedule, run.checkpoints[0], keeps,
                             chunk_size=chunk)
    steps = []
    two = counterfactual_sgd(run.objective, run.schedule, run.checkpoints[0], keeps,
                             on_step=steps.append, chunk_size=chunk, workers=2)
    assert steps == list(range(run.schedule.steps))  # the first share reports every step
    parts = shares(5, 2, chunk)
    each = [counterfactual_sgd(run.objective, run.schedule, run.checkpoints[0], keeps[rows],
                               chunk_size=chunk) for rows in parts]
    assert identical(two, {name: torch.cat([e[name] for e in each]) for name in two})
    assert identical(two, one)  # every mask in the same vmap chunk: the bits of one thread
    assert len(parts) == (1 if chunk is None else 2)


def test_outcomes_do_not_depend_on_the_number_of_workers(small_cnn, monkeypatch):
    sets = [[], small_cnn.train_ids[:30], small_cnn.train_ids[100:160]]
    monkeypatch.setenv("INFLUENCE_WORKERS", "1")
    alone = counterfactual.outcomes(small_cnn, sets)
    monkeypatch.setenv("INFLUENCE_WORKERS", "3")
    assert workers(small_cnn.device) == 3
    shared = counterfactual.outcomes(small_cnn, sets)
    pd.testing.assert_frame_equal(shared, alone)
    assert shared.query_loss.iloc[1] != shared.query_loss.iloc[0]


def test_a_failure_in_any_share_stops_the_others_and_is_raised():
    started, stopped_at = threading.Barrier(2), {}

    def run_share(rows, on_step):
        started.wait()
        for t in range(10 ** 6):
            if rows.start == 1 and t == 5:
                raise ValueError("share 1 broke")
            try:
                on_step(t)
            except Exception:
                stopped_at[rows.start] = t
                raise
        return {"x": torch.zeros(1)}

    with pytest.raises(ValueError, match="share 1 broke"):
        in_parallel(run_share, [slice(0, 1), slice(1, 2)])
    assert stopped_at[0] < 10 ** 6 - 1  # share 0 stopped early


def test_a_cancelled_first_share_cancels_the_run(small_cnn):
    class Cancel(Exception):
        pass

    def cancel_at(t):
        if t == 3:
            raise Cancel()

    keeps = torch.ones(4, len(small_cnn.train_ids), dtype=torch.bool)
    with pytest.raises(Cancel):
        counterfactual_sgd(small_cnn.objective, small_cnn.schedule, small_cnn.checkpoints[0],
                           keeps, on_step=cancel_at, workers=2)


def test_the_replay_ahead_of_the_retrace_gives_the_same_bits(small_cnn):
    run = small_cnn
    u = run.query_loss().gradient(run.theta)
    steps = {True: [], False: []}
    scores = {ahead: retrace(run.objective, run.schedule, run.checkpoints, run.keep_at, u,
                             range(run.schedule.epochs), steps[ahead].append, run.labels_at,
                             every=1, ahead=ahead) for ahead in (False, True)}
    assert torch.equal(scores[True], scores[False])
    assert sorted(steps[True]) == sorted(steps[False])  # the same progress, in another order


def test_the_run_replays_ahead_with_a_second_core_and_two_epochs_in_memory(small_cnn,
                                                                             monkeypatch):
    monkeypatch.setenv("INFLUENCE_WORKERS", "2")
    assert small_cnn.replay_ahead()
    monkeypatch.setenv("INFLUENCE_WORKERS", "1")
    assert not small_cnn.replay_ahead()
    monkeypatch.setenv("INFLUENCE_WORKERS", "two")
    with pytest.raises(RunError, match="whole number"):
        workers(small_cnn.device)


def test_the_probe_chooses_the_same_rate_with_its_rates_shared(small_cnn, monkeypatch):
    monkeypatch.setenv("INFLUENCE_WORKERS", "1")
    alone = probe.choose_lr(small_cnn)
    monkeypatch.setenv("INFLUENCE_WORKERS", "2")
    shared = probe.choose_lr(small_cnn)
    assert shared == alone


def test_objectives_built_in_one_thread_work_in_another(small_cnn):
    """An objective made here and used only by a worker thread: that thread's own model copy."""
    obj = Objective(small_cnn.model, small_cnn.objective.x[:10], small_cnn.objective.y[:10])
    here = obj.outputs(small_cnn.theta, obj.x)
    there = []
    thread = threading.Thread(target=lambda: there.append(obj.outputs(small_cnn.theta, obj.x)))
    thread.start()
    thread.join()
    assert torch.equal(here, there[0])


def test_workers_count_the_cores_where_there_is_no_cpu_affinity(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: every core counts."""
    monkeypatch.delenv("INFLUENCE_WORKERS", raising=False)
    monkeypatch.delattr("os.sched_getaffinity", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert workers(torch.device("cpu")) == 2
    assert workers(torch.device("cuda")) == 1


def test_progress_counts_up_whichever_thread_reports():
    """The replay ahead reports from its own thread: the units still come 1, 2, … in order (a
    unit reported out of order restarts the page's time-left clock)."""
    seen = []
    report = counted(lambda p: seen.append((p.phase, p.done, p.total)), "score", 4000)
    switching_often([lambda: [report(t) for t in range(2000)]] * 2)
    assert seen == [("score", k, 4000) for k in range(1, 4001)]
    assert counted(None, "score", 10) is None


@pytest.mark.parametrize("rows, workers", [
    ([slice(0, 1)], 2),  # fewer shares than workers: a thread of its own
    ([slice(0, 3), slice(3, 5)], 2),  # as many: before the last share, in its thread
    ([slice(0, 5)], 1),  # one worker: first, in this thread
])
def test_work_beside_the_shares_runs_once_at_the_same_time(rows, workers):
    seen, meet = [], threading.Barrier(2, timeout=10)

    def run_share(part, on_step):
        if workers > 1 and part.start == 0:
            meet.wait()  # the first share and the work beside run at the same time
        seen.append((threading.get_ident(), part.start))
        on_step(0)
        return {"x": torch.arange(part.start, part.stop)}

    def beside():
        if workers > 1:
            meet.wait()
        seen.append((threading.get_ident(), "beside"))

    steps = []
    out = in_parallel(run_share, rows, steps.append, beside, workers)
    assert torch.equal(out["x"], torch.arange(rows[-1].stop)) and steps == [0]
    assert sorted(map(str, [what for _, what in seen])) == sorted(
        map(str, ["beside", *[r.start for r in rows]]))  # each once
    where = dict((what, ident) for ident, what in seen)
    if len(rows) == workers:  # before the last share, in its thread
        order = [what for _, what in seen]
        assert where[rows[-1].start] == where["beside"]
        assert order.index("beside") < order.index(rows[-1].start)
    if workers == 1:
        assert where["beside"] == threading.get_ident()


def test_a_failure_beside_the_shares_stops_them_and_is_raised():
    started, stopped = threading.Barrier(2), []

    def run_share(part, on_step):
        started.wait()
        for t in range(10 ** 6):
            try:
                on_step(t)
            except Exception:
                stopped.append(t)
                raise
        return {"x": torch.zeros(1)}

    def beside():
        started.wait()
        raise ValueError("the work beside broke")

    with pytest.raises(ValueError, match="beside broke"):
        in_parallel(run_share, [slice(0, 1)], None, beside, 2)
    assert stopped and stopped[0] < 10 ** 6 - 1


def test_a_cleaning_round_retrains_beside_its_controls_with_the_same_bits(small_cnn, monkeypatch):
    """The cleaned run retrains at the same time as its random controls: the same cleaned run
    and the same controls as one after the other, and the controls' progress comes after the
    cleaned run's."""
    from influence import cleaning
    removed = small_cnn.train_ids[:20]
    monkeypatch.setenv("INFLUENCE_WORKERS", "1")
    child_alone, alone = cleaning.clean(small_cnn, removed, controls=3)
    monkeypatch.setenv("INFLUENCE_WORKERS", "2")
    phases = []
    child, verdict = cleaning.clean(small_cnn, removed, controls=3,
                                    on_progress=lambda p: phases.append(p.phase))
    assert identical(child.theta, child_alone.theta)
    assert identical(child.theta, small_cnn.retrain(removed).theta)
    assert verdict["control_errors"] == alone["control_errors"]
    assert verdict["test_error_after"] == alone["test_error_after"]
    first_control = phases.index("control")
    assert set(phases[:first_control]) == {"train"} and set(phases[first_control:]) == {"control"}


def test_progress_held_back_is_reported_from_where_it_got_once_released():
    seen = []
    held = HeldBack(lambda p: seen.append((p.phase, p.done)))
    held(Progress("control", 1, 9))
    held(Progress("control", 4, 9))
    assert seen == []
    held.release()
    held(Progress("control", 5, 9))
    assert seen == [("control", 4), ("control", 5)]


def test_models_built_in_many_threads_at_once_each_have_their_seed():
    """torch's global random state is one per process: models built at once in several threads
    (two browser sessions' jobs) drew from each other's seed before models.seeded."""
    from influence import models
    shape, seeds = (8, 8, 1), range(6)
    alone = {s: models.build("cnn-small", shape, 10, s).state_dict() for s in seeds}
    built, errors = {}, []

    def build(seed):
        try:
            for _ in range(15):
                model = models.build("cnn-small", shape, 10, seed).state_dict()
                assert all(torch.equal(model[k], alone[seed][k]) for k in model), seed
            built[seed] = True
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    switching_often([lambda s=s: build(s) for s in seeds])
    assert not errors and sorted(built) == list(seeds)
