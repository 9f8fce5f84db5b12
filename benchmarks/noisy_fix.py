"""Planted label noise: fixing labels instead of removing images.

Per split: the MNIST 10k set split 60/20/20 into train/validation/test; 10% of the training
labels flipped uniformly to another class (the same flips as benchmarks/noisy_find.py;
validation and test clean); the paper's MNIST CNN trained by plain SGD on the noisy labels.
For the flipped images, how often SGD-influence's best label (its relabel effects,
influence.relabel) and the label check's suggestion are the true label; then the clean test
error after fixing or removing the top-k (FIX_WAYS, among them what the app recommends:
influence.advice), each against random rounds of the same size (influence.cleaning).

Writes noisy-fix.md, noisy-fix.csv and noisy-fix-labels.csv (-all with --mode all, -<N>epochs
for other than 6 epochs, -quick with --quick). With `--resume`, the splits stored there are kept
and not computed again.

    python benchmarks/noisy_fix.py --splits 3 --epochs 6
    python benchmarks/noisy_fix.py --quick --controls 2     # digits, 2 splits
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from common import met
from influence import advice, cleaning, relabel
from influence import labels as label_check
from influence.compare import holm
from influence.counterfactual import outcomes

FIX_WAYS = {  # way → what it does, in the report's words
    "fix": "fix the top-k to SGD-influence's best label",
    "remove": "remove the same top-k",
    "fix where both agree": "fix those of the top-k whose best label is the label check's "
                            "suggestion too",
    "label check: fix": "fix the label check's top-k to its suggestion (where it differs)",
    "label check: remove": "remove the label check's top-k",
    "remove (removal ranking)": "remove SGD-influence's top-k by its removal score (the app's "
                                "ranking)",
    "fix to the check's label (removal ranking)": "the same top-k: fix those the label check "
                                                  "gives another label to that label, remove the "
                                                  "rest (what the app recommends)",
}
FIX_PAIRS = {"fix": "remove", "label check: fix": "label check: remove",  # fixing vs removing
             "fix to the check's label (removal ranking)": "remove (removal ranking)"}
LAST_STEPS = 2  # "in the last 2 steps": images whose last use is one of the final SGD steps


def fix_split(data, split: int, a):
    """One split: SGD-influence's relabel effects (all epochs retraced) and the label check of the
    training images; how often each one's suggested label is the true one on the flipped images;
    then the clean test error after cleaning each way's top-k (FIX_WAYS) and after `a.controls`
    random rounds of the same size each (random fixes of images the label check flags, to its
    suggested label, and random removals: influence.cleaning.random_controls), all retrained in
    mode a.mode in one vectorised run (counterfactual.outcomes). SGD-influence's best label and
    the label check's suggestion, where they agree and what the app recommends come from
    influence.advice, the random rounds' fixes from the images the label check flags
    (influence.cleaning), as in the app."""
    began = time.perf_counter()
    noisy, flipped_all = common.flip_labels(data, a.noise, split)
    run = common.train_run(noisy, split, a.epochs, a.name)
    base = common.test_error(run)
    flipped, true = flipped_all[run.split.train], data.labels[run.split.train]
    given = run.objective.y.numpy()
    t = time.perf_counter()
    removal, effects = run.relabel_influence()
    relabel_seconds = time.perf_counter() - t
    best, effect = relabel.best_labels(effects, given)
    n, ids, classes = len(given), run.train_ids, run.data.classes
    checked = label_check.confident_learning(run).assign(sample_id=ids)
    suggested = np.array([classes.index(c) for c in checked.suggested_label])
    advised = advice.suggestions(ids, [classes[c] for c in given], relabel.table(run, effects),
                                 checked)  # the app's suggestions: agree, action, suggested
    agree = advised.agree.to_numpy()
    top10 = lambda s: np.argsort(s, kind="stable")[:int(round(0.1 * n))]  # noqa: E731
    right = lambda labels, where: float((labels == true)[where].mean())  # noqa: E731
    in_top = lambda s: top10(s)[flipped[top10(s)]]  # noqa: E731  (flipped in the top 10 %)
    accuracy = {"split": split, "base_error": base, "relabel_seconds": relabel_seconds,
                "sgd: right, flipped": right(best, flipped),
                "sgd: right, flipped in its top 10% (best fix)": right(best, in_top(effect)),
                "sgd: flipped in its top 10% (best fix)": int(len(in_top(effect))),
                "sgd: right, flipped in its top 10% (removal)": right(best, in_top(removal)),
                "sgd: flipped in its top 10% (removal)": int(len(in_top(removal))),
                "check: right, flipped": right(suggested, flipped),
                "check: right, flipped in its top 10%": right(suggested,
                                                              in_top(checked.influence.to_numpy())),
                "check: flipped in its top 10%": int(len(in_top(checked.influence.to_numpy()))),
                "sgd: top 10% (best fix) given its most common best label": one_class(
                    best[top10(effect)]),
                "both agree, flipped": float(agree[flipped].mean()),
                "right where both agree, flipped": right(best, flipped & agree)}
    rounds = {}  # (way, k) → (removed ids, fixes)
    for f in a.fractions:
        k = int(round(f * n))
        top, top_check = (np.argsort(s, kind="stable")[:k]
                          for s in (effect, checked.influence.to_numpy()))
        rounds["fix", k] = ([], {ids[j]: int(best[j]) for j in top})
        rounds["remove", k] = ([ids[j] for j in top], {})
        rounds["fix where both agree", k] = ([], {ids[j]: int(best[j]) for j in top if agree[j]})
        rounds["label check: fix", k] = ([], {ids[j]: int(suggested[j]) for j in top_check
                                              if suggested[j] != given[j]})
        rounds["label check: remove", k] = ([ids[j] for j in top_check], {})
        top_removal = np.argsort(removal, kind="stable")[:k]
        rounds["remove (removal ranking)", k] = ([ids[j] for j in top_removal], {})
        ticked, fixes = advice.fix_top([ids[j] for j in top_removal], advised, set(), {})
        rounds["fix to the check's label (removal ranking)", k] = (  # "Fix top K" in the app
            [ids[j] for j in top_removal if ids[j] in ticked],
            {sid: classes.index(c) for sid, c in fixes.items()})
    sizes = sorted({(len(r), len(fx)) for r, fx in rounds.values()})
    flagged = cleaning.flagged_labels(checked)  # what a random fix draws from
    controls = {size: cleaning.random_controls(run, *size, a.controls, seed=1000 * split + s,
                                               flagged=flagged)
                for s, size in enumerate(sizes)}
    sets = list(rounds.values()) + [c for size in sizes for c in controls[size]]
    errors = outcomes(run, [r for r, _ in sets], a.mode, fixes=[fx for _, fx in sets]
                      ).test_error.to_numpy()
    control_error = dict(zip(sizes, errors[len(rounds):].reshape(len(sizes), a.controls)
                             .mean(1)))
    late = last_steps(run)
    accuracy["steps"] = run.schedule.steps
    accuracy[f"sgd: top 10% (best fix) in the last {LAST_STEPS} steps"] = float(
        late[top10(effect)].mean())
    accuracy[f"sgd: top 10% (removal) in the last {LAST_STEPS} steps"] = float(
        late[top10(removal)].mean())
    rows = []
    for ((way, k), (removed, fixes)), error in zip(rounds.items(), errors):
        new = np.array(list(fixes.values()), dtype=int)
        changed = [run.position[sid] for sid in [*removed, *fixes]]
        rows.append({"split": split, "way": way, "k": k, "images": len(changed),
                     "flipped among them": int(flipped[changed].sum()),
                     "fixed to the true label": int(sum(c == true[run.position[sid]]
                                                        for sid, c in fixes.items())),
                     "largest share of one new label": one_class(new) if len(new) else np.nan,
                     f"in the last {LAST_STEPS} steps": int(late[changed].sum()),
                     "error": float(error), "control_error": float(control_error[
                         (len(removed), len(fixes))]), "base_error": base})
    print(f"split {split}: test error {100 * base:.2f}% · best label right for "
          f"{accuracy['sgd: right, flipped in its top 10% (best fix)']:.3f} of the flipped in "
          f"SGD-influence's top 10%, suggestion {accuracy['check: right, flipped in its top 10%']:.3f}"
          f" · " + " · ".join(f"{r['way']} {r['k']}: {100 * r['error']:.2f}%" for r in rows)
          + f" ({time.perf_counter() - began:.0f} s)", flush=True)
    return rows, [accuracy]


def last_steps(run) -> np.ndarray:
    """Per training position: whether its last use is one of the final LAST_STEPS SGD steps
    (the steps whose effect later training cannot undo)."""
    late = np.zeros(len(run.train_ids), dtype=bool)
    for t in range(run.schedule.steps - LAST_STEPS, run.schedule.steps):
        late[np.asarray(run.schedule.batch(t))] = True
    return late


def one_class(labels: np.ndarray) -> float:
    """The share of the most common value: how much a set of new labels piles into one class."""
    return float(np.bincount(labels).max() / len(labels))


def fix_tables(rows: pd.DataFrame, accuracy: pd.DataFrame):
    """(suggested-label accuracy, mean ± std over splits; test error per way and k against its
    random controls, against no cleaning, and fixing against removing the same top-k: paired
    t-tests over splits, Holm-corrected over every p of the table)."""
    from scipy.stats import ttest_rel

    acc = accuracy.drop(columns=["split", "base_error", "steps"]).agg(common.mean_std).rename(
        "mean ± std over splits").rename_axis("measure").reset_index()
    table, p_values = [], []
    for (way, k), part in rows.groupby(["way", "k"], sort=False):
        part = part.set_index("split")
        row = {"way": way, "k": k, "images changed": common.mean_std(part["images"]),
               "flipped among them": common.mean_std(part["flipped among them"]),
               "fixed to the true label": common.mean_std(part["fixed to the true label"]),
               "largest share of one new label": common.mean_std(
                   part["largest share of one new label"])
               if part["largest share of one new label"].notna().any() else "",
               f"in the last {LAST_STEPS} steps": common.mean_std(
                   part[f"in the last {LAST_STEPS} steps"]),
               "test error %": common.mean_std(100 * part.error),
               "random, same size %": common.mean_std(100 * part.control_error),
               "vs random (pp)": f"{100 * (part.error - part.control_error).mean():+.2f}",
               "vs none (pp)": f"{100 * (part.error - part.base_error).mean():+.2f}"}
        table.append(row)
        p_values += [(len(table) - 1, "p vs random", ttest_rel(part.error, part.control_error)),
                     (len(table) - 1, "p vs none", ttest_rel(part.error, part.base_error))]
        if way in FIX_PAIRS:
            removed = rows[(rows.way == FIX_PAIRS[way]) & (rows.k == k)
                           ].set_index("split").loc[part.index]
            row["fix − remove (pp)"] = f"{100 * (part.error - removed.error).mean():+.2f}"
            p_values.append((len(table) - 1, "p fix vs remove",
                             ttest_rel(part.error, removed.error)))
    p = np.array([test.pvalue if len(rows.split.unique()) > 1 else np.nan
                  for _, _, test in p_values])
    for (row, name, _), raw, corrected in zip(p_values, p, holm(p)):
        table[row][f"{name} (paired t)"] = raw
        table[row][f"{name} (Holm)"] = corrected
    return acc, pd.DataFrame(table).astype(object).fillna("")


def fix_report(rows: pd.DataFrame, accuracy: pd.DataFrame, a, out: Path) -> dict:
    acc, table = fix_tables(rows, accuracy)
    tested = table.filter(like="(Holm)").apply(pd.to_numeric, errors="coerce")
    right = accuracy["sgd: right, flipped in its top 10% (best fix)"].mean()
    fix_vs_remove = rows.pivot_table(index=["split", "k"], columns="way", values="error")
    gain = (fix_vs_remove["remove"] - fix_vs_remove["fix"]).groupby("k").mean()
    recommended = (fix_vs_remove["remove (removal ranking)"] - fix_vs_remove[
        "fix to the check's label (removal ranking)"]).groupby("k").mean()
    late_fix, late_removal = (f"sgd: top 10% ({r}) in the last {LAST_STEPS} steps"
                              for r in ("best fix", "removal"))
    common.write_report(out, a.name_out, "Planted label noise: fixing labels instead of "
                        "removing images", common.command(), [
        f"Data: {a.data_note}; {a.noise:.0%} of the training labels flipped to a random other "
        f"class; validation and test labels clean. CNN `{a.model_note}`, plain SGD, batch 64, "
        f"η = {a.lr}, {a.epochs} epochs; {rows.split.nunique()} splits. SGD-influence's relabel "
        "effects L̂_{j→c} (the estimated change of the mean validation loss if image j had "
        "label c, from the same retrace of all epochs as its removal scores) give every image a "
        "best label (argmin over the other classes) and a ranking by that effect. The label "
        "check is cleanlab on 5-fold out-of-sample probabilities of the same CNN and SGD; its "
        "suggestion is the most probable class.",
        "Suggested labels of the flipped images: the share that is the true label, over all "
        "flipped images and over those in each ranking's top 10% (SGD-influence ranked by its "
        "best relabel effect, or by its removal score); how many flipped images each top 10% "
        "holds; and where SGD-influence's best label and the label check's suggestion "
        "agree:\n\n" + common.markdown(acc),
        f"Clean test error after cleaning the top-k and retraining by counterfactual SGD (mode "
        f"{a.mode}; fixes from the same epoch), each against {a.controls} random rounds of the "
        "same size on the same split (random fixes: random images the label check flags, given "
        "its suggested label; "
        "random removals), against no cleaning, and fixing against removing the same images. "
        "Ways: " + "; ".join(f"*{w}*: {d}" for w, d in FIX_WAYS.items()) + f". No cleaning: "
        f"{common.mean_std(100 * accuracy.base_error)} %. p: paired t-test over splits, "
        f"Holm-corrected over the {int(tested.notna().sum().sum())} tests of this table "
        f"({int((tested < 0.05).sum().sum())} below 0.05):\n\n" + common.markdown(table),
        f"Targets: SGD-influence's best label right for ≥ 0.9 of the flipped images in its top "
        f"10%: {right:.3f}, {met(right >= 0.9)}. Fixing lowers test error more than removing "
        f"the same images (mean over splits of removing − fixing, pp): "
        + ", ".join(f"k = {k}: {100 * g:+.2f}" for k, g in gain.items())
        + " (paired tests in the table). The app's recommendation (its removal ranking, fixed "
        "to the label check's label where it gives another one, the rest removed) against "
        "removing the same images, pp: " + ", ".join(
            f"k = {k}: {100 * g:+.2f}" for k, g in recommended.items()) + ".",
        f"Where SGD-influence's best relabels are: of its top 10% by best relabel effect, "
        f"{common.mean_std(accuracy[late_fix])} are images last used in the final {LAST_STEPS} "
        f"SGD steps (of {int(accuracy.steps.iloc[0])} per run), against {common.mean_std(accuracy[late_removal])} "
        "of its top 10% by removal score. A relabel changes an image's gradient by J_jᵀ(e_y − "
        "e_c), which does not shrink when the model fits the image (a removal's g_j does), so "
        "the largest first-order relabel effects belong to the last steps, and their best "
        "labels follow the direction the validation loss wants there rather than the image; "
        "fixing many of them at once is one large step in one direction, which the additive "
        "first-order estimate does not foresee.",
        f"Per-split values: `{a.name_out}.csv`, `{a.name_out}-labels.csv`."])
    return {"sgd_right_top10": float(right),
            "check_right_top10": float(accuracy["check: right, flipped in its top 10%"].mean()),
            "sgd_right_flipped": float(accuracy["sgd: right, flipped"].mean()),
            **{f"fix_gain_{k}": float(g) for k, g in gain.items()},
            **{f"recommended_gain_{k}": float(g) for k, g in recommended.items()}}




def main(argv=None) -> dict:
    parser = common.label_noise_parser(__doc__, "0.05,0.1,0.2", "clean this fraction of the "
                                       "training set (top-k)")
    parser.add_argument("--controls", type=int, default=5,
                        help="random rounds of the same size per cleaning")
    a, data, out = common.label_noise_setup(parser, argv, "noisy-fix")
    return common.by_split(data, out, a, "labels", fix_split, fix_report)


if __name__ == "__main__":
    main()
