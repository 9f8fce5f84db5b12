"""The work the app starts: training, scoring, the trust check, the k-curve and cleaning rounds,
each a job of the runner (app.services.runner), which runs it in a thread here or on a cluster.
Every job makes no UI calls (no streamlit) and goes through the workspace Store for everything it
reads and produces (status running → done / failed / cancelled; a job that dies with the server
is marked interrupted by the store on the next start); bad settings are refused before a job
starts, with a clear message.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import numpy as np

from influence import advice, cleaning, kcurve, methods, probe, relabel, run_folder, runs, trust
from influence.progress import Cancelled, Progress
from influence.config import RunConfig, RunError

from ..words import PHASES, plain_message
from .runner import Busy, Job, active, start
from .store import CANCELLED, DONE, FAILED, Store


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


TRUST = trust.FIGURES  # what the trust check keeps (trust.figures: JSON, enough for
# influence.advice.trust_verdict)


CHECK_GROUPS = trust.GROUPS  # random groups of 5 % of the training images in the trust check
CHECK_SINGLES = trust.SINGLES  # single images retrained by default: none, on request only


def start_check(store: Store, session: str, run_id: str, method: str, n: int = CHECK_SINGLES,
                groups: int = CHECK_GROUPS) -> Job:
    """The engine's trust check: real retraining without `groups` random groups of 5 % of the
    training images and the ranking's top sets (the go/no-go), and without n single images
    spread over the ranking when asked (n ≥ 2), all at once."""
    methods.estimating_removal(method)  # refused here, before the job starts
    scores = store.scores(run_id, method)
    exclude = store.score_info(run_id)[method].get("query") or []

    def work(job: Job) -> dict:
        run = store.open_run(run_id)
        job.say(f"retraining without each of {groups} random groups and the ranking's top "
                f"sets{f' and {n} single images' if n else ''}, all at once, to compare with "
                "the estimates")
        result = trust.of_ranking(run, method, n, on_progress=job.report, ranked=scores,
                                  groups=groups, exclude=exclude)
        figures = trust.figures(result)
        store.set_trust(run_id, method, figures)
        said = [f"Kendall τ = {figures['tau']:.2f} over {figures['n']} images"
                if figures.get("tau") is not None else "",
                f"Spearman {figures['group_spearman']:.2f} over {figures['groups']} groups"
                if figures.get("group_spearman") is not None else ""]
        job.say("; ".join(s for s in said if s) or "checked")
        return figures

    return start(session, "check", "Checking the ranking", work,
                 result={"run": run_id, "method": method}, store=store, reads=[run_id])


def start_curve(store: Store, session: str, run_id: str, method: str, mode: str = "last",
                controls: int = kcurve.CONTROLS, seed: int = 0) -> Job:
    """How many to remove: the k-curve of a computed ranking (influence.kcurve), every top-k
    and random removal in one vectorised retraining, judged on the run's selection images.
    The job's result keeps the curve per k (`band`) and the suggestion, with how many of the
    suggested set the label check flags when it has been computed for the run."""
    run = store.open_run(run_id)
    ranked = store.scores(run_id, method)
    kcurve.check_curve(run, ranked, mode, controls)  # refused here, before the job starts
    info = store.score_info(run_id)
    exclude = (info.get(method) or {}).get("query") or []
    check = store.scores(run_id, advice.CHECK) if advice.CHECK in info else None
    flagged = [] if check is None else list(check.sample_id[check.flagged.astype(bool)])

    def work(job: Job) -> dict:
        ks = kcurve.sizes(len(ranked))
        job.say(f"retraining without the top {', '.join(map(str, ks[1:]))} of the ranking and "
                f"without {controls} random sets of each size, all at once (mode {mode})")
        frame, found = kcurve.curve(run, ranked, mode, controls, seed, exclude=exclude,
                                    on_progress=job.report, flagged=flagged)
        job.say(found["sentence"])
        return {"band": kcurve.band(frame).to_dict("records"), "suggestion": found}

    return start(session, "curve", "Choosing how many to remove", work,
                 result={"run": run_id, "method": method, "mode": mode}, store=store,
                 reads=[run_id])


def stored_flags(store: Store, run_id: str) -> dict[str, str] | None:
    """The label check of a run's training images as its random fixes draw from them
    (cleaning.flagged_labels), where page 3 has computed and kept it; None: the round computes
    it itself."""
    if advice.CHECK not in store.score_info(run_id):
        return None
    check = store.scores(run_id, advice.CHECK)
    return cleaning.flagged_labels(check) if "flagged" in check.columns else None


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
    flagged = stored_flags(store, run_id) if fixes and controls else None
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
                    lambda p: job.report(p) if p.phase == "control" else curve(p), flagged)
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
