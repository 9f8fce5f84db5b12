"""Why this mistake? Background jobs that explain one test image of a run (influence.explain) and
check that explanation against real retraining, with their results kept by the store in the
run's folder (Store.add_explanation, Store.set_explanation_trust): the training images whose
removal most lowers that test image's loss and those whose removal most raises it
(influence.explain.table), and the trust check's figures.
"""
from __future__ import annotations

import time

from influence import explain, methods, trust
from influence.config import RunError
from influence.progress import Progress

from . import runner
from .store import DONE, Store

TOP = 20  # training images kept per side
CHECK_SINGLES, CHECK_GROUPS = 10, 10


def _finished_run(store: Store, run_id: str, method: str) -> None:
    methods.get(method, among=methods.keys(explains="batched"))  # many test images, one retrace
    if store.run(run_id)["status"] != DONE:
        raise RunError(f"run {run_id} is not finished: train a model first")


def start_explain(store: Store, session: str, run_id: str, test_id: str, method: str) -> runner.Job:
    """Explain one test image of a finished run in the background (one retrace)."""
    _finished_run(store, run_id, method)

    def work(job: runner.Job) -> dict:
        begun = time.perf_counter()
        run = store.open_run(run_id)
        run.test_positions([test_id])
        job.say(f"following training backwards for test image {test_id} "
                f"({methods.get(method).title})")
        job.report(Progress("score", 0, 1))
        matrix = explain.test_scores(run, method, [test_id], on_progress=job.report)
        store.add_explanation(run_id, test_id, method, explain.table(run, [test_id], matrix,
                                                                     TOP))
        job.say(f"done in {time.perf_counter() - begun:.1f} s")
        return {"run": run_id, "test_id": test_id, "method": method}

    return runner.start(session, "explain", f"Explaining test image {test_id}", work,
                        result={"run": run_id, "test_id": test_id, "method": method},
                        store=store, reads=[run_id])


def start_explain_check(store: Store, session: str, run_id: str, test_id: str,
                        method: str) -> runner.Job:
    """The trust check for one explained test image: real retraining without single training
    images spread over its ranking and random groups, measuring that test image's loss."""
    _finished_run(store, run_id, method)

    def work(job: runner.Job) -> dict:
        run = store.open_run(run_id)
        job.say(f"retraining without each of {CHECK_SINGLES} single images and {CHECK_GROUPS} "
                f"random groups, all at once, to compare with the estimates for {test_id}")
        result = trust.of_test_image(run, method, test_id, CHECK_SINGLES,
                                     on_progress=job.report, groups=CHECK_GROUPS)
        figures = trust.figures(result)
        store.set_explanation_trust(run_id, test_id, method, figures)
        return figures

    return runner.start(session, "explain-check", f"Checking the explanation of {test_id}",
                        work, result={"run": run_id, "test_id": test_id, "method": method},
                        store=store, reads=[run_id])
