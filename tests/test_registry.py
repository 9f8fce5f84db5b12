"""influence.methods is the only place that knows a ranking's key: the CLI's choices, the app's
list of rankings, the jobs that score and check them and the explain choices all come from its
registry, so a ranking added there (one entry) appears everywhere."""
import argparse
import dataclasses

import numpy as np
import pytest

from app.services import explaining, jobs
from app.services.store import DONE, Store
from helpers import session_of, trained_in_app
from influence import cli, explain, methods
from influence.config import RunError


def cli_choices(command: str, option: str = "--method") -> list[str]:
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    return list(action.choices)


@pytest.fixture
def fakes(monkeypatch):
    """Two rankings added to the registry: one like the fast SGD-influence (it estimates
    removal, relabels and explains test images in batches) and one by suspicion only."""
    like_sgd = dataclasses.replace(methods.REGISTRY["sgd-last"], key="fake-sgd",
                                   name="Fake SGD", title="fake SGD-influence")
    suspicion = methods.Ranking(
        "fake-suspicion", "Fake", "fake suspicion", "A ranking made up for this test.",
        lambda run, on_progress=None, **_: np.linspace(-1, 1, len(run.train_ids)),
        retrain_mode=None, flag=None)
    monkeypatch.setattr(methods, "REGISTRY", {**methods.REGISTRY, like_sgd.key: like_sgd,
                                              suspicion.key: suspicion})
    return like_sgd.key, suspicion.key


def test_the_cli_choices_are_the_registry_keys():
    keys = list(methods.REGISTRY)
    assert keys == ["sgd", "sgd-refined", "sgd-last", "sgd-damped", "confident-learning", "kl",
                    "tracin", "isolation-forest", "autoencoder", "random",
                    "confident-learning-pixels"]
    assert cli_choices("score") == keys == cli_choices("curve")
    assert cli_choices("check") == ["sgd", "sgd-refined", "sgd-last", "sgd-damped", "kl",
                                    "tracin"]
    assert cli_choices("explain") == ["sgd", "sgd-last"]
    assert methods.keys(relabels=True) == ("sgd", "sgd-last")
    assert methods.keys(in_app=True) == tuple(k for k in keys if "random" not in k
                                              and k != "confident-learning-pixels")


def test_each_entry_says_one_thing_once():
    for key, r in methods.REGISTRY.items():
        assert r.key == key
        assert r.last_epoch_only == r.options.get("last_epoch_only", False), key
        assert r.refines is None or r.refines in methods.REGISTRY, key
        if r.relabels or r.explains == "batched":  # they follow SGD backwards
            assert r.phase == "score" and r.estimates_removal, key
        if r.explains is not None:
            assert r.estimates_removal, key
    with pytest.raises(RunError, match="unknown ranking 'nope'"):
        methods.get("nope")
    with pytest.raises(RunError, match="use one of sgd, sgd-last"):
        methods.get("kl", among=methods.keys(explains="batched"))


def test_a_ranking_added_to_the_registry_is_offered_by_the_cli(fakes):
    like_sgd, suspicion = fakes
    assert {like_sgd, suspicion} <= set(cli_choices("score")) & set(cli_choices("curve"))
    assert like_sgd in cli_choices("check") and suspicion not in cli_choices("check")
    assert like_sgd in cli_choices("explain") and suspicion not in cli_choices("explain")
    assert methods.keys(relabels=True) == ("sgd", "sgd-last", like_sgd)
    assert explain.explaining(like_sgd).last_epoch_only
    with pytest.raises(RunError, match="cannot explain"):
        explain.explaining(suspicion)


@pytest.mark.usefixtures("workspace")
def test_a_ranking_added_to_the_registry_is_in_the_app_and_its_jobs(fakes):
    like_sgd, suspicion = fakes
    at = trained_in_app()
    run_id = at.session_state["app"]["run"]
    at.switch_page("views/harmful.py").run()
    offered = at.radio(key="score_method").options  # the app's list of rankings, in words
    assert "fake SGD-influence" in offered and "Compare: fake suspicion" in offered
    first_other = next(i for i, o in enumerate(offered) if o.startswith("Compare:"))
    assert offered.index("fake SGD-influence") < first_other  # with SGD-influence, first

    store, session = Store(), session_of(at)
    job = jobs.start_scoring(store, session, run_id, suspicion).wait(120)
    assert job.status == DONE, job.error
    run = store.open_run(run_id)
    assert len(store.scores(run_id, suspicion)) == len(run.train_ids)
    with pytest.raises(RunError, match="Fake does not estimate"):
        jobs.start_check(store, session, run_id, suspicion)
    with pytest.raises(RunError, match="unknown ranking 'random'"):
        jobs.start_scoring(store, session, run_id, "random")  # in_app=False

    test_id = run.data.ids[run.split.test[0]]
    with pytest.raises(RunError, match="unknown ranking 'fake-suspicion'"):
        explaining.start_explain(store, session, run_id, test_id, suspicion)
    job = explaining.start_explain(store, session, run_id, test_id, like_sgd).wait(120)
    assert job.status == DONE, job.error
    assert len(store.explanation(run_id, test_id, like_sgd)) > 0
