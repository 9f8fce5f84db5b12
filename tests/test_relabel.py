"""Relabelling: the SGD-influence of giving a training instance another label, from the same
retrace as removal (sgd_influence.retrace_with_relabel), and counterfactual retraining with fixed
labels (counterfactual.changes and outcomes, Run.retrain, with fixes).

Exactness: for squared loss on one-hot targets with a linear model trained one epoch, the
gradient change of a relabel, J_jᵀ(e_y − e_c), does not depend on θ and enters θ linearly, so
the estimate equals ⟨u, θ_{j→c}[T] − θ[T]⟩ of brute-force counterfactual SGD up to rounding."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.preprocessing import StandardScaler
from torch import nn

from datasets.builtin import load_digits
from influence import models, run_folder, runs
from influence.config import RunConfig, RunError
from influence.counterfactual import changes, class_index, outcomes
from influence.sgd import (Objective, SGDConfig, counterfactual_sgd, initial_params,
                           make_schedule, per_sample_loss, run_sgd)
from influence.sgd_influence import (label_change_dots, loss_gradient, retrace,
                                     retrace_with_relabel)

CLASSES = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def squared_one_hot(out, y):
    """½‖f − e_y‖²: squared loss on one-hot targets (written without one_hot, which vmap lacks)."""
    one_hot = (torch.arange(out.shape[-1], device=out.device) == y[:, None]).to(out.dtype)
    return 0.5 * ((out - one_hot) ** 2).sum(-1)


def linear_one_hot(n: int, l2: float, lr_decay: str):
    """A linear model, 4 features → CLASSES outputs, squared loss on one-hot targets (float64),
    one epoch of SGD in batches of 5; θ[1] and a random query u."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    torch.manual_seed(1)
    model = nn.Linear(4, CLASSES).double()
    obj = Objective(model, x, y, l2=l2, loss=squared_one_hot)
    schedule = make_schedule(n, SGDConfig(epochs=1, batch_size=5, lr=0.1, lr_decay=lr_decay,
                                          l2=l2, seed=3))
    theta0 = initial_params(model, "cpu", torch.float64)
    u = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in theta0.items()}
    return obj, schedule, theta0, u


def every_relabel(y: torch.Tensor, classes: int) -> torch.Tensor:
    """(N·classes) × N label vectors: row j·classes + c is y with instance j labelled c."""
    n = len(y)
    labels = y.expand(n * classes, n).clone()
    rows = torch.arange(n * classes)
    labels[rows, rows // classes] = rows % classes
    return labels


@pytest.mark.parametrize("l2,lr_decay", [(0.0, "constant"), (0.01, "inv_sqrt")])
def test_squared_loss_on_one_hot_one_epoch_is_exact_for_every_instance_and_class(l2, lr_decay):
    n = 36
    obj, schedule, theta0, u = linear_one_hot(n, l2, lr_decay)
    everyone = torch.ones(n, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)
    scores, effects = retrace_with_relabel(obj, schedule, checkpoints, lambda k: everyone, u,
                                           range(1), CLASSES)
    # the same removal scores as retrace, bit for bit: the relabel effects ride along
    assert torch.equal(scores, retrace(obj, schedule, checkpoints, lambda k: everyone, u,
                                       range(1)))

    thetas = counterfactual_sgd(obj, schedule, theta0, everyone.expand(n * CLASSES, n),
                                labels=every_relabel(obj.y, CLASSES))
    truth = sum(((thetas[k] - checkpoints[1][k]) * u[k]).flatten(1).sum(1) for k in u)
    truth = truth.reshape(n, CLASSES).numpy()

    own = np.arange(CLASSES)[None] == obj.y.numpy()[:, None]
    assert np.all(effects.numpy()[own] == 0)  # its own label: no change (truth: rounding)
    assert np.abs(truth[~own]).min() > 1e-4  # not vacuous: every other label moves the query
    np.testing.assert_allclose(effects.numpy(), truth, rtol=0, atol=1e-10)


def test_vectorised_relabels_match_one_at_a_time():
    n = 20
    obj, schedule, theta0, _ = linear_one_hot(n, 0.01, "constant")
    schedule = make_schedule(n, SGDConfig(epochs=2, batch_size=4, lr=0.1, seed=1))
    everyone = torch.ones(n, dtype=torch.bool)
    labels = obj.y.expand(3, n).clone()
    labels[0, 3], labels[1, 7], labels[1, 8] = (obj.y[[3, 7, 8]] + 1) % CLASSES
    batched = counterfactual_sgd(obj, schedule, theta0, everyone.expand(3, n),
                                 labels=lambda k: labels if k == 1 else obj.y.expand(3, n))
    for m in range(3):
        one = run_sgd(obj, schedule, theta0, lambda k: everyone,
                      labels_at=lambda k: labels[m] if k == 1 else obj.y)[2]
        for name in one:
            torch.testing.assert_close(batched[name][m], one[name], rtol=0, atol=1e-12)
    assert not torch.allclose(batched["weight"][0], batched["weight"][2])


def test_label_change_dots_have_the_closed_forms():
    gen = torch.Generator().manual_seed(0)
    out, y = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 0])
    ju = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    expected = ju.gather(1, y[:, None]) - ju  # (J u)_y − (J u)_c
    for loss in (per_sample_loss, squared_one_hot):
        torch.testing.assert_close(label_change_dots(loss, out, ju, y, 4), expected)
    logit, b = torch.randn(6, 1, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    ju = torch.randn(6, 1, generator=gen, dtype=torch.float64)
    change = label_change_dots(per_sample_loss, logit, ju, b, 2)  # BCE: (y − c)(J u)
    torch.testing.assert_close(change, (b[:, None] - torch.arange(2)[None]).double() * ju)


def digits_logreg(classes: list[int], n_train: int, n_val: int, batch_size: int):
    """Logistic regression on standardised digits of `classes` (cross-entropy; binary
    cross-entropy on one logit for two classes), 5 epochs of SGD: objective, schedule,
    checkpoints, the validation loss and u (its gradient at θ[T])."""
    data = load_digits()
    rng = np.random.default_rng(0)
    pick = rng.permutation(np.flatnonzero(np.isin(data.labels, classes)))[:n_train + n_val]
    flat = data.images[pick].reshape(len(pick), -1).astype(np.float64)
    x = torch.as_tensor(StandardScaler().fit(flat[:n_train]).transform(flat)).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(np.searchsorted(classes, data.labels[pick]))
    model = models.build("logreg", (8, 8, 1), len(classes), seed=0).double()
    cfg = SGDConfig(epochs=5, batch_size=batch_size, lr=0.1, lr_decay="inv_sqrt", l2=0.01)
    obj = Objective(model, x[:n_train], y[:n_train], l2=cfg.l2)
    schedule = make_schedule(n_train, cfg)
    theta0 = initial_params(model, "cpu", torch.float64)
    everyone = torch.ones(n_train, dtype=torch.bool)
    checkpoints = run_sgd(obj, schedule, theta0, lambda k: everyone)

    def val_loss(theta):
        return per_sample_loss(obj.outputs(theta, x[n_train:]), y[n_train:]).mean()

    return obj, schedule, checkpoints, val_loss, loss_gradient(val_loss, checkpoints[5])


@pytest.mark.parametrize("classes,n_train,batch_size", [(list(range(10)), 300, 10),
                                                        ([1, 7], 200, 5)])
def test_relabel_effects_rank_like_retraining_on_digits_logreg(classes, n_train, batch_size):
    """Kendall τ ≥ 0.9 between the estimated and the retrained change of validation loss for
    60 random (instance, other label) pairs: 10 classes (cross-entropy) and 1 vs 7 (binary
    cross-entropy)."""
    obj, schedule, checkpoints, val_loss, u = digits_logreg(classes, n_train, 200, batch_size)
    everyone = torch.ones(n_train, dtype=torch.bool)
    _, effects = retrace_with_relabel(obj, schedule, checkpoints, lambda k: everyone, u,
                                      range(5), len(classes))
    rng = np.random.default_rng(1)
    j = rng.choice(n_train, 60, replace=False)
    c = (obj.y[j].numpy() + rng.integers(1, len(classes), 60)) % len(classes)
    labels = obj.y.expand(60, n_train).clone()
    labels[np.arange(60), j] = torch.as_tensor(c)
    thetas = counterfactual_sgd(obj, schedule, checkpoints[0], everyone.expand(60, n_train),
                                labels=labels)
    base = float(val_loss(checkpoints[5]))
    truth = np.array([float(val_loss({k: v[m] for k, v in thetas.items()})) - base
                      for m in range(60)])
    assert np.ptp(truth) > 1e-3  # the relabels do move the validation loss
    tau = kendalltau(effects[j, c].numpy(), truth).statistic
    assert tau >= 0.9, tau


# --- runs with fixed labels -------------------------------------------------------------------
@pytest.fixture(scope="module")
def run():
    r = runs.Run(RunConfig(model="logreg", epochs=2, seed=0, dtype="float64"))
    r.train()
    return r


def other_label(run, position: int, step: int = 1) -> str:
    """A class name other than the given label of a training position."""
    given = run.data.labels[run.split.train[position]]
    return run.data.classes[(given + step) % len(run.data.classes)]


def test_retraining_with_fixes_matches_the_vectorised_outcomes(run):
    ids = run.train_ids
    fixes = {ids[0]: other_label(run, 0), ids[5]: other_label(run, 5, 3)}
    for mode in ("all", "last"):
        child = run.retrain([ids[9]], mode, fixes=fixes)
        first = 0 if mode == "all" else 1
        assert child.config.fixes == {ids[0]: [class_index(run, fixes[ids[0]]), first],
                                      ids[5]: [class_index(run, fixes[ids[5]]), first]}
        assert child.config.removed == {ids[9]: first}
        assert child.objective.y[0] == class_index(run, fixes[ids[0]])
        assert child.labels_at(0)[0] == (child.objective.y[0] if mode == "all"
                                         else run.objective.y[0])
        together = outcomes(run, [[], [ids[9]]], mode, fixes=[{}, fixes])
        assert together.test_loss[0] == pytest.approx(run.evaluate("test")[0], abs=1e-12)
        assert together.test_loss[1] == pytest.approx(child.evaluate("test")[0], abs=1e-12)
        assert together.test_loss[1] != pytest.approx(
            run.retrain([ids[9]], mode).evaluate("test")[0], abs=1e-9)  # the fixes matter


def test_fixing_from_the_first_epoch_is_training_on_the_fixed_labels(run):
    """What a fix means, checked end to end: fixing images to labels c (mode all) gives the very
    model trained from scratch on a copy of the data where those images carry c (class names
    and indices, positions and sample ids all line up)."""
    ids, n = run.train_ids, 12
    fixes = {ids[j]: other_label(run, j, 1 + j % 3) for j in range(0, 6 * n, 6)}
    labels = run.data.labels.copy()
    for sid, name in fixes.items():
        labels[run.split.train[run.position[sid]]] = run.data.classes.index(name)
    relabelled = runs.Run(RunConfig(model="logreg", epochs=2, seed=0, dtype="float64"),
                          run.data.relabelled(labels))
    relabelled.train()
    child = run.retrain([], "all", fixes=fixes)
    for name in child.theta:
        assert torch.equal(child.theta[name], relabelled.theta[name]), name
    assert outcomes(run, [[]], "all", fixes=[fixes]).test_loss[0] == pytest.approx(
        relabelled.evaluate("test")[0], abs=1e-12)
    assert child.evaluate("test")[0] != pytest.approx(run.evaluate("test")[0], abs=1e-9)


def test_a_fixed_run_replays_and_scores_with_its_own_labels(run, tmp_path):
    ids = run.train_ids
    child = run.retrain([ids[2]], "last", fixes={ids[0]: other_label(run, 0)})
    run_folder.save(child, tmp_path / "child")
    again = run_folder.load(tmp_path / "child")
    assert again.config.fixes == child.config.fixes
    assert json.loads((tmp_path / "child" / "config.json").read_text())["fixes"] == {
        ids[0]: [class_index(run, other_label(run, 0)), 1]}
    scores, effects = again.relabel_influence()
    np.testing.assert_array_equal(scores, again.influence())
    assert effects.shape == (len(ids), len(run.data.classes))
    assert np.isnan(effects[2]).all() and not np.isnan(np.delete(effects, 2, 0)).any()
    in_use = again.objective.y.numpy()
    assert in_use[0] == class_index(run, other_label(run, 0))
    others = ~np.isin(np.arange(len(ids)), [0, 2])
    assert np.all(effects[others, in_use[others]] == 0)  # their own label: no change
    # image 0 had its given label in epoch 0 (the fix is from the last epoch): the new label
    # in every epoch is a change too
    assert effects[0, in_use[0]] != 0
    ranked = again.ranking(scores)
    assert ranked.set_index("sample_id").label[ids[0]] == other_label(run, 0)
    # a fix retraced from the recorded trajectory: replaying epoch 1 with the fixed labels
    # reproduces θ[T] of the saved child exactly
    from influence.sgd import replay_epoch, sgd_step
    thetas = replay_epoch(again.objective, again.schedule, again.checkpoints[1], 1,
                          again.keep_at(1), labels=again.labels_at(1))
    last = again.schedule.epoch_steps(1)[-1]
    final = sgd_step(again.objective, thetas[-1],
                     torch.as_tensor(again.schedule.batch(last)), float(again.schedule.lr[last]),
                     again.keep_at(1), labels=again.labels_at(1))[0]
    for name, p in final.items():
        assert torch.equal(p, again.theta[name])


@pytest.mark.parametrize("fixes,remove,words", [
    ({"no-such-image": "1"}, [], "not training instances"),
    ({0: "no-such-class"}, [], "unknown label"),
    ({0: 99}, [], "unknown label"),
    ({0: "given"}, [], "given label"),
    ({0: "other"}, [0], "both removed and fixed"),
])
def test_bad_fixes_are_refused(run, fixes, remove, words):
    ids = run.train_ids
    given = run.data.classes[run.data.labels[run.split.train[0]]]
    fixes = {(ids[k] if isinstance(k, int) else k):
             {"given": given, "other": other_label(run, 0)}.get(v, v) for k, v in fixes.items()}
    with pytest.raises(RunError, match=words):
        changes(run, [ids[k] for k in remove], fixes=fixes)
    with pytest.raises(RunError, match=words):
        outcomes(run, [[ids[k] for k in remove]], fixes=[fixes])


def test_a_fixed_image_cannot_be_removed_or_refixed_to_its_label(run):
    ids = run.train_ids
    child = run.without(changes(run, fixes={ids[0]: other_label(run, 0)}, mode="last"))
    child.checkpoints = run.checkpoints  # (only the config matters here)
    with pytest.raises(RunError, match="both removed and fixed"):
        changes(child, [ids[0]])
    with pytest.raises(RunError, match="already"):
        changes(child, fixes={ids[0]: other_label(run, 0)}, mode="last")
    refixed = child.without(changes(child, fixes={ids[0]: other_label(run, 0, 2)}))  # epoch 0
    assert refixed.config.fixes[ids[0]] == [class_index(run, other_label(run, 0, 2)), 0]
    with pytest.raises(RunError, match="fixed from epoch 1 already"):
        changes(refixed, fixes={ids[0]: other_label(run, 0, 3)}, mode="last")


@pytest.mark.parametrize("fixes,words", [
    (["a"], "fixes has the wrong type"),
    ({"a": 3}, "fixes has the wrong type"),
    ({"a": [1]}, "class index, first epoch"),
    ({"a": [-1, 0]}, "class index, first epoch"),
])
def test_config_validation_of_fixes(fixes, words):
    with pytest.raises(RunError, match=words):
        RunConfig(fixes=fixes).validate()
    with pytest.raises(RunError, match="both removed and fixed"):
        RunConfig(removed={"a": 0}, fixes={"a": [1, 0]}).validate()


def test_a_fix_to_an_unknown_class_in_a_config_is_refused(run):
    from dataclasses import replace
    with pytest.raises(RunError, match="classes"):
        runs.Run(replace(run.config, fixes={run.train_ids[0]: [10, 0]}), run.data)


# --- cleaning rounds with fixes, and the relabel table ------------------------------------------
def flagged_of(run, positions, step=1) -> dict:
    """A stand-in for the label check's flagged training images: id → a suggested label."""
    return {run.train_ids[i]: other_label(run, i, step) for i in positions}


def test_random_controls_fix_flagged_images_to_their_suggested_label(run):
    from influence import cleaning
    ids = run.train_ids
    flagged = flagged_of(run, range(10, 30))
    flagged[ids[30]] = run.data.classes[run.data.labels[run.split.train[30]]]  # its own label
    rounds = cleaning.random_controls(run, 3, 4, 5, seed=1, flagged=flagged)
    assert len(rounds) == 5
    for removed, fixes in rounds:
        assert len(removed) == 3 and len(fixes) == 4 and not set(removed) & set(fixes)
        assert set(fixes) <= set(flagged) - {ids[30]}  # only flagged ones, to another label
        assert all(c == class_index(run, flagged[sid]) for sid, c in fixes.items())
    assert len({tuple(sorted(f.items())) for _, f in rounds}) > 1
    assert cleaning.random_controls(run, 3, 4, 5, seed=1, flagged=flagged) == rounds  # seeded
    few = cleaning.random_controls(run, 0, 4, 3, seed=2, flagged=flagged_of(run, [1, 2]))
    assert [sorted(f) for _, f in few] == [sorted([ids[1], ids[2]])] * 3  # all there are
    with pytest.raises(RunError, match="flagged"):
        cleaning.random_controls(run, 3, 4, 5, seed=1)  # never random wrong labels
    # without fixes: the random removals drawn as before fixes existed
    rng = np.random.default_rng(1)
    before = [[ids[i] for i in sorted(rng.choice(len(ids), 3, replace=False))]
              for _ in range(5)]
    assert cleaning.random_removals(run, 3, 5, seed=1) == before
    assert [r for r, _ in cleaning.random_controls(run, 3, 0, 5, seed=1)] == before


def test_a_cleaning_round_with_fixes_has_fair_controls_in_one_run(run, monkeypatch):
    """The random rounds remove as many random images and fix as many flagged ones to their
    suggested label; one more model removes the fixed images instead of fixing them; all in one
    call of counterfactual.outcomes."""
    from influence import cleaning
    ids = run.train_ids
    fixes = {ids[0]: other_label(run, 0), ids[2]: other_label(run, 2)}
    flagged = {**flagged_of(run, range(20, 40), step=2), **fixes}
    calls = []

    def spy(of, removals, *args, **kwargs):
        calls.append((removals, kwargs["fixes"]))
        return outcomes(of, removals, *args, **kwargs)

    monkeypatch.setattr(cleaning, "outcomes", spy)
    child, verdict = cleaning.clean(run, [ids[1]], "last", controls=3, fixes=fixes,
                                    flagged=flagged, rounds=2)
    (removals, fixed), = calls
    assert len(removals) == 3 + 1 and len(fixed) == 3 + 1
    for removed, fx in zip(removals[:3], fixed[:3]):
        assert len(removed) == 1 and len(fx) == 2 and set(fx) <= set(flagged)
        assert all(c == class_index(run, flagged[sid]) for sid, c in fx.items())
    assert removals[3] == [ids[1], ids[0], ids[2]] and fixed[3] == {}  # removed instead
    assert cleaning.removed_instead([ids[1]], fixes) == [ids[1], ids[0], ids[2]]
    instead = run.retrain(removals[3], "last").correct("test")
    assert verdict["remove_instead_error"] == pytest.approx(1 - instead.mean())
    assert verdict["fixing_beats_removing"] is not None and verdict["rounds"] == 2
    assert verdict["removed"] == 1 and verdict["relabelled"] == 2
    assert verdict["controls"] == 3 and len(verdict["control_errors"]) == 3
    assert "fixing 2 random images the label check flags and removing 1 random one" in \
        " ".join(verdict["details"])
    assert child.config.fixes == {sid: [class_index(run, c), 1] for sid, c in fixes.items()}
    with pytest.raises(RunError, match="remove or to fix"):
        cleaning.clean(run, [], "last")


def test_without_flagged_images_a_round_with_fixes_runs_the_label_check(run, monkeypatch):
    from influence import cleaning, labels
    check = labels.confident_learning(run)
    flagged = cleaning.flagged_labels(check.assign(sample_id=run.train_ids))
    assert flagged and all(check.flagged[run.position[sid]] for sid in flagged)
    assert cleaning.label_check_flags(run) == flagged
    calls = []
    monkeypatch.setattr(cleaning, "outcomes", lambda of, removals, *a, **k: calls.append(
        k["fixes"]) or outcomes(of, removals, *a, **k))
    fixes = {run.train_ids[0]: other_label(run, 0)}
    cleaning.clean(run, [], "last", controls=2, fixes=fixes)
    assert all(set(f) <= set(flagged) and len(f) == 1 for f in calls[0][:2])


def test_a_removal_round_has_random_removals_of_its_size_as_controls(run, monkeypatch):
    from influence import cleaning
    calls = []
    monkeypatch.setattr(cleaning, "outcomes", lambda of, removals, *a, **k: calls.append(
        (removals, k["fixes"])) or outcomes(of, removals, *a, **k))
    _, verdict = cleaning.clean(run, run.train_ids[:4], "last", controls=5)
    (removals, fixed), = calls
    assert [len(r) for r in removals] == [4] * 5 and fixed == [{}] * 5
    assert verdict["remove_instead_error"] is None and verdict["fixing_beats_removing"] is None
    assert verdict["controls"] == 5 and verdict["random_test"] in ("prediction interval",
                                                                    "empirical")


def test_best_labels_skip_the_label_in_use_and_removed_rows():
    from influence import relabel
    effects = np.array([[0.0, -1.0, -2.0], [0.5, 0.0, 0.2], [np.nan] * 3])
    best, effect = relabel.best_labels(effects, np.array([2, 1, 0]))
    assert best.tolist() == [1, 2, -1]
    np.testing.assert_array_equal(effect, [-1.0, 0.2, np.nan])
    assert relabel.in_words(-0.012, "7", -0.004) == (
        "relabelling as 7 is estimated to lower validation loss by 0.012; removing it by 0.004")
    assert relabel.in_words(-0.012, "7", 0.004).endswith("removing it would raise it by 0.004")


def test_the_relabel_table_leaves_out_removed_images(run):
    from influence import relabel
    child = run.without(changes(run, [run.train_ids[0]], "last"))
    effects = np.random.default_rng(0).normal(size=(len(run.train_ids), 10))
    effects[0] = np.nan
    frame = relabel.table(child, effects)
    assert len(frame) == len(run.train_ids) - 1 and run.train_ids[0] not in set(frame.sample_id)
    assert frame.effect_best.is_monotonic_increasing and "effect_to_9" in frame.columns
    assert "effect_to_9" not in relabel.table(child, effects, per_class=False).columns


@pytest.mark.parametrize("key", ["sgd", "sgd-last"])
def test_scoring_with_relabel_effects_gives_the_ranking_of_scoring_alone(run, key):
    from influence import methods, relabel
    leave_out = [run.data.ids[i] for i in run.split.val[:7]]
    for exclude in ((), leave_out):
        frame, effects = relabel.rank_with_effects(run, key, exclude=exclude)
        alone = methods.rank(run, key, exclude=exclude)
        assert frame.sample_id.tolist() == alone.sample_id.tolist()
        np.testing.assert_allclose(frame.influence, alone.influence, rtol=1e-10, atol=1e-15)
        assert set(effects.sample_id) == set(frame.sample_id)
    with pytest.raises(RunError, match="relabel effects come with"):
        relabel.rank_with_effects(run, "tracin")
