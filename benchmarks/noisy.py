"""Planted label noise: do the methods find training images whose label was flipped?

Per split: the MNIST 10k set split 60/20/20 into train/validation/test; 10% of the training
labels flipped uniformly to another class (validation and test stay clean: the validation set
is the trusted reference, as the paper assumes); the paper's MNIST CNN trained by plain SGD on
the noisy training labels. For every method: recall of the flipped
training instances within its top 10% and top 20%, ROC AUC of its score for "flipped", and the
clean test error after removing its top-k and retraining by counterfactual SGD. With
`--truth N`, also the exact leave-one-out effect (Definition 2, all epochs retrained) of N
flipped and N clean training instances per split: is removing a flipped label really what
lowers the validation loss, and does each method's score follow that true effect?

The label check (confident learning on k-fold probabilities of the run's own model,
influence.labels) is also measured as a check: flagged count against the true number of flipped
labels, precision and recall of the flags, accuracy of the suggested labels, and its cost next to
SGD-influence's scoring (<name>-labels.csv).

With `--noisy-eval`, the same fraction of labels is also flipped in validation and test: the
label check of the validation images, and SGD-influence with the flagged validation images left
out of the query or not, judged by test error on the noisy and on the true test labels
(noisy-eval.md).

With `--fix`, labels are fixed instead of images removed: for the flipped images, how often
SGD-influence's best label (its relabel effects, influence.relabel) and the label check's
suggestion are the true label; and the clean test error after fixing or removing the top-k,
each against random rounds of the same size (noisy-fix.md).

With `--resume`, stored per-split results are kept and only the methods missing for a split are
computed (the split's run is trained again, and must reproduce the stored test error).

    python benchmarks/noisy.py --splits 5 --epochs 6
    python benchmarks/noisy.py --splits 5 --epochs 6 --noisy-eval
    python benchmarks/noisy.py --splits 5 --epochs 6 --fix
    python benchmarks/noisy.py --quick      # digits, 2 splits
    python benchmarks/noisy.py --splits 5 --epochs 6 --ray HEAD:6379   # splits on a cluster
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score

import common
from common import LABELS
from influence import labels as label_check
from influence.counterfactual import outcomes
from influence.sgd import predictions

VAL_FRACTION = TEST_FRACTION = 0.2  # RunConfig's defaults, used by common.train_run


def with_flipped_training_labels(data, fraction: float, seed: int):
    """The data set with `fraction` of its training labels (the split Run makes for `seed`)
    changed to a different class, uniformly; validation and test keep their clean labels and
    the split stays the clean one (ImageSet.relabelled). Also: which positions were flipped."""
    return with_flipped_labels(data, fraction, seed, ("train",))


def with_flipped_labels(data, fraction: float, seed: int, parts: tuple[str, ...]):
    """`fraction` of the labels of each of `parts` (train/val/test of the split Run makes for
    `seed`) changed to a different class, uniformly; the split stays the clean one. The
    training flips are the same whatever the parts. Also: which positions were flipped."""
    split = data.split(VAL_FRACTION, TEST_FRACTION, seed)
    rng = np.random.default_rng(seed)
    labels, k = data.labels.copy(), len(data.classes)
    flipped = []
    for part in parts:
        positions = getattr(split, part)
        chosen = rng.choice(positions, int(round(fraction * len(positions))), replace=False)
        labels[chosen] = (labels[chosen] + rng.integers(1, k, len(chosen))) % k
        flipped.append(chosen)
    noisy = data.relabelled(labels, f"{fraction:.0%} of {'/'.join(parts)} labels flipped")
    return noisy, np.isin(np.arange(len(labels)), np.concatenate(flipped))


def recall_at(scores: np.ndarray, flipped: np.ndarray, fraction: float) -> float:
    top = np.argsort(scores, kind="stable")[:int(round(fraction * len(scores)))]
    return float(flipped[top].sum() / max(flipped.sum(), 1))


def leave_one_out(run, scores: dict[str, np.ndarray], flipped: np.ndarray, n: int,
                  seed: int) -> list[dict]:
    """The true change of validation loss when one instance is removed and all epochs are
    retrained by counterfactual SGD, for n flipped and n clean training positions drawn at
    random, next to every method's score for them."""
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.choice(np.flatnonzero(flipped), n, replace=False),
                             rng.choice(np.flatnonzero(~flipped), n, replace=False)])
    base = run.evaluate("val")[0]
    return [{"position": int(j), "flipped": bool(flipped[j]),
             "true": run.retrain([run.train_ids[j]], "all").evaluate("val")[0] - base,
             **{m: float(s[j]) for m, s in scores.items()}} for j in picked]


def one_split(data, split: int, a, have: frozenset = frozenset(),
              base_error: float | None = None):
    """The methods of a.methods not in `have` on one split: ranking rows, retraining errors,
    leave-one-out truth (a new split only) and the label check's own rows. base_error: the
    stored test error of this split's run, which the run trained again must reproduce."""
    began = time.perf_counter()
    noisy, flipped_all = with_flipped_training_labels(data, a.noise, split)
    run = common.train_run(noisy, split, a.epochs, a.name)
    flipped = flipped_all[run.split.train]
    assert flipped.sum() == flipped_all.sum(), "the run's split differs from the flipped one"
    base = common.test_error(run)
    if base_error is not None and not np.isclose(base, base_error, rtol=0, atol=1e-12):
        raise SystemExit(f"split {split}: the run trains to test error {base} now, but "
                         f"{base_error} in the stored results; run without --resume")
    todo = [m for m in a.methods if m not in have]
    scores, seconds = common.method_scores(run, [m for m in todo if m != "confident-learning"],
                                           split)
    labels_rows = []
    if "confident-learning" in todo:
        labels_rows, scores["confident-learning"], seconds["confident-learning"] = \
            check_labels(run, flipped, data.labels[run.split.train], split, seconds.get("sgd"))
    scores = {m: scores[m] for m in todo}
    n = len(flipped)
    ranking = [{"split": split, "method": m, "flipped": int(flipped.sum()), "n_train": n,
                "recall@10%": recall_at(s, flipped, 0.1), "recall@20%": recall_at(s, flipped, 0.2),
                "auc": roc_auc_score(flipped, -s), "score_seconds": seconds[m]}
               for m, s in scores.items()]
    ks = [int(round(f * n)) for f in a.fractions]
    errors = common.retrain_errors(run, scores, ks, a.mode)
    for r in errors:
        r.update(split=split, base_error=base)
    truth = [dict(r, split=split) for r in leave_one_out(run, scores, flipped, a.truth, split)
             ] if a.truth and not have else []
    print(f"split {split}: test error {100 * base:.2f}% · recall@10%: "
          + " · ".join(f"{r['method']} {r['recall@10%']:.2f}" for r in ranking)
          + f" ({time.perf_counter() - began:.0f} s)", flush=True)
    return ranking, errors, truth, labels_rows


# --- the label check on the run's own model (influence.labels) --------------------------------
FOLD_TRAINING = {True: "mean over kept images", False: "Definition 2 (full-batch divisor)"}


def check_labels(run, flipped: np.ndarray, true_labels: np.ndarray, split: int,
                 sgd_seconds: float | None = None):
    """The label check of one split's training images, its fold models trained both ways
    (labels.fold_probabilities: rescale True, the default, and False): flagged count against
    the true number of flipped labels, precision and recall of the flags, accuracy of the
    suggested labels on the flipped images, recall@10%/20%, AUC and seconds, next to the
    seconds of SGD-influence's scoring of the same run (timed here unless given). Returns the
    rows, and the default check's scores and seconds (the ranking "confident-learning")."""
    if sgd_seconds is None:
        began = time.perf_counter()
        common.methods.position_scores(run, "sgd")
        sgd_seconds = time.perf_counter() - began
    rows, default = [], None
    for rescale in (True, False):
        began = time.perf_counter()
        frame = label_check.confident_learning(run, rescale=rescale)
        seconds = time.perf_counter() - began
        s, flagged = frame.influence.to_numpy(), frame.flagged.to_numpy()
        suggested = np.array([run.data.classes.index(c) for c in frame.suggested_label])
        default = default or (s, seconds)
        rows.append({"split": split, "fold training": FOLD_TRAINING[rescale],
                     "flipped": int(flipped.sum()), "flagged": int(flagged.sum()),
                     "flagged / flipped": flagged.sum() / flipped.sum(),
                     "precision": float(flipped[flagged].mean()) if flagged.any() else np.nan,
                     "recall": float(flagged[flipped].mean()),
                     "suggested label right": float((suggested == true_labels)[flipped].mean()),
                     "recall@10%": recall_at(s, flipped, 0.1),
                     "recall@20%": recall_at(s, flipped, 0.2),
                     "auc": roc_auc_score(flipped, -s), "seconds": seconds,
                     "sgd_seconds": sgd_seconds, "train_seconds": run.metrics["seconds"]})
    return rows, *default


def label_sections(rows: pd.DataFrame) -> list[str]:
    """The label check's own table (mean ± std over splits) and its targets."""
    if rows.empty:
        return []
    columns = ["flagged", "flipped", "flagged / flipped", "precision", "recall",
               "suggested label right", "recall@10%", "recall@20%", "auc", "seconds",
               "sgd_seconds", "train_seconds"]
    table = (rows.groupby("fold training", sort=False)
             .agg(**{c: (c, common.mean_std) for c in columns}).reset_index()
             .rename(columns={"seconds": "seconds (label check)",
                              "sgd_seconds": "seconds (SGD-influence scoring)",
                              "train_seconds": "seconds (training)"}))
    main = rows[rows["fold training"] == FOLD_TRAINING[True]]
    ratio = main["flagged / flipped"]
    return [
        "The label check (`confident-learning`): cleanlab's `find_label_issues` (its default, "
        "prune by noise rate) and label quality (self-confidence) on 5-fold out-of-sample "
        "probabilities of the same CNN with the same SGD (initialisation, batch order, η, "
        "epochs), the 5 fold models trained at once by counterfactual SGD vectorised over the "
        "fold masks. Each fold model either takes the mean gradient over the kept images of "
        "each batch (the default), or keeps Definition 2's divisor |S_t|, which shrinks its "
        "steps to 0.8·η. Flagged count against the true number of flipped labels, precision "
        "and recall of the flags, share of flipped images whose suggested label (the most "
        "probable class) is the true one, and the cost next to SGD-influence's scoring and "
        "one training of the same run, same process (mean ± std over splits):\n\n"
        + common.markdown(table),
        f"Targets (default fold training): recall@10% ≥ 0.95: "
        f"{main['recall@10%'].mean():.4f}, {met(main['recall@10%'].mean() >= 0.95)} (per "
        f"split {main['recall@10%'].min():.3f}–{main['recall@10%'].max():.3f}); flagged "
        f"within 1.5× of the true number: {ratio.min():.2f}–{ratio.max():.2f}×, "
        f"{met(ratio.between(1 / 1.5, 1.5).all())}; AUC ≥ 0.98: {main['auc'].mean():.4f}, "
        f"{met(main['auc'].mean() >= 0.98)}.",
        *fold_training_comparison(rows)]


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def fold_training_comparison(rows: pd.DataFrame) -> list[str]:
    """The two ways of training the fold models, compared split by split: mean difference
    and paired t-test p, Holm-corrected over the measures."""
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests

    measures = ["recall@10%", "auc", "precision", "recall", "suggested label right",
                "flagged / flipped"]
    kept, full = (rows[rows["fold training"] == FOLD_TRAINING[r]].set_index("split")
                  for r in (True, False))
    if len(kept) < 2:
        return []
    p = [ttest_rel(kept[m], full.loc[kept.index, m]).pvalue for m in measures]
    table = pd.DataFrame({"measure": measures,
                          "mean over kept − Definition 2": [(kept[m] - full.loc[kept.index, m])
                                                            .mean() for m in measures],
                          "p (paired t)": p,
                          "p (Holm)": multipletests(p, method="holm")[1]})
    return ["The two fold trainings, split by split (paired t-test over splits, Holm-corrected "
            "over the measures):\n\n" + common.markdown(table)]


def truth_table(truth: pd.DataFrame, methods: list[str]):
    """Per split, then mean ± std: (1) the true leave-one-out effect of flipped vs clean
    instances; (2) each method's Kendall τ with that effect and its AUC for 'flipped' on the
    same instances (the truth's own AUC is the best any estimate of this effect can do), also
    as plain means per method key ('true' for the truth)."""
    effect, agree = [], []
    for split, part in truth.groupby("split"):
        f, c = part[part.flipped], part[~part.flipped]
        effect.append({"split": split, "flipped: mean change": f.true.mean(),
                       "clean: mean change": c.true.mean(),
                       "flipped: share harmful": (f.true < 0).mean(),
                       "clean: share harmful": (c.true < 0).mean()})
        for m in ["true", *methods]:
            agree.append({"split": split, "score": m,
                          "tau with the truth": kendalltau(part[m], part.true).statistic
                          if m != "true" else 1.0,
                          "auc for flipped": roc_auc_score(part.flipped, -part[m])})
    names = {"true": "exact removal effect (truth)", **LABELS}
    small = lambda v: f"{np.mean(v):+.1e} ± {np.std(v):.0e}"  # noqa: E731  (losses move ~1e-3)
    effect = pd.DataFrame(effect).drop(columns="split")
    effect = effect.agg({c: small if "change" in c else common.mean_std for c in effect}
                        ).to_frame().T
    columns = ["tau with the truth", "auc for flipped"]
    agree = pd.DataFrame(agree)
    means = agree.groupby("score", sort=False)[columns].mean()
    table = (agree.assign(score=agree.score.map(names)).groupby("score", sort=False)
             .agg(**{c: (c, common.mean_std) for c in columns}).reset_index())
    return effect, table, means


def report(ranking: pd.DataFrame, errors: pd.DataFrame, truth: pd.DataFrame, a,
           out: Path, label_rows: pd.DataFrame | None = None) -> dict:
    label = lambda f: f.assign(method=f["method"].map(LABELS))  # noqa: E731
    ranking, errors = label(ranking), label(errors)
    recall = (ranking.groupby("method", sort=False)
              .agg(**{c: (c, common.mean_std) for c in ["recall@10%", "recall@20%", "auc"]})
              .reset_index())
    table = common.paired_summary(errors, ["method", "k"])
    base = errors.drop_duplicates("split")["base_error"]
    png = out / f"{a.name_out}.png"
    _recall_chart(png, ranking, a)
    common.write_report(out, a.name_out, "Planted label noise: finding flipped labels",
                        common.command(), [
        f"Data: {a.data_note}; {a.noise:.0%} of the training labels flipped to a random other "
        f"class ({ranking['flipped'].iloc[0]} of {ranking['n_train'].iloc[0]}); validation "
        f"and test labels clean. CNN `{a.model_note}`, "
        f"plain SGD, batch 64, η = {a.lr}, {a.epochs} epochs (the paper: 20). "
        f"{ranking['split'].nunique()} splits. "
        "SGD-influence, K&L and TracIn rank by influence on the mean validation loss"
        + ("; confident learning is cleanlab's label quality on 5-fold out-of-sample "
           "probabilities of the same CNN and SGD (the label check, below)"
           if LABELS["confident-learning"] in set(ranking.method) else "")
        + ("; confident learning (raw pixels) is cleanlab's label quality on 5-fold "
           "out-of-fold probabilities of a logistic regression on the first 50 principal "
           "components of the standardised pixels" if LABELS["confident-learning-pixels"] in
           set(ranking.method) else "") + ".",
        "Recall of the flipped instances within each method's top 10% / 20%, and ROC AUC "
        "(mean ± std over splits):\n\n" + common.markdown(recall),
        f"Clean test error after removing the top-k and retraining (mode {a.mode}); no "
        f"removal: {common.mean_std(100 * base)} %:\n\n"
        + common.markdown(table.filter(regex="^[^_]")) + "\n\n" + common.holm_note(table),
        *truth_sections(truth, a),
        *label_sections(pd.DataFrame() if label_rows is None else label_rows),
        f"![recall chart]({png.name})\n\nPer-split values: `{a.name_out}-ranking.csv`, "
        f"`{a.name_out}-errors.csv`" + (f", `{a.name_out}-truth.csv`" if len(truth) else "")
        + (f", `{a.name_out}-labels.csv`" if label_rows is not None and len(label_rows)
           else "") + "."])
    mean = ranking.groupby("method")[["recall@10%", "recall@20%", "auc"]].mean()
    result = {}
    for key, method in [("sgd", "sgd"), ("cl", "confident-learning"),
                        ("cl_pixels", "confident-learning-pixels"), ("random", "random")]:
        if LABELS[method] in mean.index:
            m = mean.loc[LABELS[method]]
            result |= {f"recall10_{key}": m["recall@10%"], f"recall20_{key}": m["recall@20%"],
                       f"auc_{key}": m["auc"]}
    if label_rows is not None and len(label_rows):
        main = label_rows[label_rows["fold training"] == FOLD_TRAINING[True]]
        result |= {"cl_flagged_ratio": main["flagged / flipped"].mean(),
                   "cl_suggested_right": main["suggested label right"].mean(),
                   "cl_seconds": main["seconds"].mean(), "sgd_seconds": main["sgd_seconds"].mean()}
    if len(truth):
        means = truth_table(truth, [m for m in a.methods if m in truth.columns])[2]
        result["auc_truth"] = means.loc["true", "auc for flipped"]
        if "sgd" in means.index:
            result["tau_truth_sgd"] = means.loc["sgd", "tau with the truth"]
    return {k: float(v) for k, v in result.items()}


def truth_sections(truth: pd.DataFrame, a) -> list[str]:
    if truth.empty:
        return []
    effect, agree, _ = truth_table(truth, [m for m in a.methods if m in truth.columns])
    n = int(truth.groupby("split").flipped.sum().iloc[0])
    return [f"Exact leave-one-out effect ({n} flipped and {n} clean training instances per "
            "split, each removed alone and all epochs retrained by counterfactual SGD): change "
            "of validation loss, and the share of instances whose removal lowers it (mean ± "
            "std over splits):\n\n" + common.markdown(effect),
            "How each score follows that true effect on the same instances: Kendall τ with it, "
            "and ROC AUC for 'flipped' (the truth's own AUC is what a perfect estimate of the "
            "removal effect would reach):\n\n" + common.markdown(agree)]


def _recall_chart(png: Path, ranking: pd.DataFrame, a) -> None:
    """Bars: mean recall@10% and @20% per method, with std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = ranking.groupby("method", sort=False)[["recall@10%", "recall@20%"]]
    mean, std = g.mean(), g.std(ddof=0)
    ax = mean.plot.bar(yerr=std, capsize=3, figsize=(7, 4.5))
    ax.set_xticklabels(mean.index, rotation=30, ha="right")
    ax.axhline(0.8, color="black", linestyle="--", linewidth=1, label="target 0.8 (@10%)")
    ax.set(title=f"Flipped labels found in the top 10% / 20% ({a.noise:.0%} flipped)",
           ylabel="recall of flipped instances", xlabel="", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    ax.figure.savefig(png, dpi=120)
    plt.close(ax.figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None,
                        help="SGD epochs (default 6; 8 with --quick)")
    parser.add_argument("--noise", type=float, default=0.1, help="fraction of labels flipped")
    parser.add_argument("--fractions", default="0.1,0.2",
                        help="remove this fraction of the training set (top-k) and retrain")
    parser.add_argument("--mode", choices=["last", "all"], default="last")
    parser.add_argument("--methods", default=",".join(common.METHODS))
    parser.add_argument("--data-dir", default=None,
                        help="default: the MNIST IDX files in the data folder beside the "
                             "repository (common.SHARED_DATA)")
    parser.add_argument("--truth", type=int, default=0, metavar="N",
                        help="also retrain without each of N flipped and N clean instances")
    parser.add_argument("--resume", action="store_true",
                        help="keep stored per-split results; compute only what is missing")
    parser.add_argument("--noisy-eval", action="store_true",
                        help="flip labels in validation and test too; measure the validation "
                             "label check and SGD-influence with and without it")
    parser.add_argument("--fix", action="store_true",
                        help="fix labels instead of removing images: suggested-label accuracy "
                             "and test error after fixing or removing the top-k")
    parser.add_argument("--fix-fractions", default="0.05,0.1,0.2",
                        help="with --fix: clean this fraction of the training set (top-k)")
    parser.add_argument("--controls", type=int, default=5,
                        help="with --fix: random rounds of the same size per cleaning")
    common.add_common_options(parser)
    common.add_ray_option(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.epochs = min(a.splits, 2), a.epochs or 8
    a.epochs = a.epochs or 6
    common.setup(a.threads)
    a.methods, a.fractions = a.methods.split(","), [float(f) for f in a.fractions.split(",")]
    a.fix_fractions = [float(f) for f in a.fix_fractions.split(",")]
    data, out = common.prepare_experiment(a, "noisy")
    if a.noisy_eval:
        return noisy_eval(data, out, a)
    if a.fix:
        return fix_labels(data, out, a)
    if not a.quick and a.epochs != 6:  # e.g. noisy-20epochs: kept apart from the default table
        a.name_out += f"-{a.epochs}epochs"
    if a.truth and not a.quick:
        a.name_out += "-truth"
    files = [out / f"{a.name_out}-{part}.csv"
             for part in ("ranking", "errors", "truth", "labels")]
    ranking, errors, truth, checks = [stored(f) if a.resume else [] for f in files]
    todo = []
    for split in range(a.splits):
        have = frozenset(r["method"] for r in ranking if r["split"] == split)
        if set(a.methods) <= have:
            continue
        base = next((r["base_error"] for r in errors if r["split"] == split), None)
        todo.append((split, a, have, base))
    for r, e, t, c in common.map_splits(one_split, data, todo, a):  # --ray: splits as tasks
        ranking, errors, truth, checks = ranking + r, errors + e, truth + t, checks + c
        ranking, errors = in_registry_order(ranking), in_registry_order(errors)
        for f, rows in zip(files, (ranking, errors, truth, checks)):
            if rows:
                pd.DataFrame(rows).to_csv(f, index=False)
    result = report(pd.DataFrame(ranking), pd.DataFrame(errors), pd.DataFrame(truth), a, out,
                    pd.DataFrame(checks))
    common.summary(**result)
    return result


# --- --noisy-eval: noise in validation and test too; the yardstick's own label check ------------
QUERIES = ("all validation images", "flagged validation images left out")


def test_errors(run, clean: np.ndarray) -> dict:
    """Test misclassification on the (noisy) test labels the run holds, and on the true ones."""
    predicted = predictions(run.outputs("test")).cpu().numpy()
    return {"error (noisy labels)": float((predicted != run.part("test").y.cpu().numpy()).mean()),
            "error (true labels)": float((predicted != clean[run.split.test]).mean())}


def eval_split(data, split: int, a) -> tuple[list[dict], list[dict]]:
    """One split with `a.noise` of the training, validation and test labels flipped: the label
    check of the validation and test images (labels.check_part), then SGD-influence on the mean
    loss over all validation images and over those the check does not flag: recall of the
    flipped training labels, and test error after removing its top-k and retraining."""
    began = time.perf_counter()
    noisy, flipped_all = with_flipped_labels(data, a.noise, split, ("train", "val", "test"))
    run = common.train_run(noisy, split, a.epochs, a.name)
    checks, flagged_val = [], []
    for part in ("val", "test"):
        frame = label_check.check_part(run, part)
        positions = getattr(run.split, part)
        wrong = {run.data.ids[i] for i in positions[flipped_all[positions]]}
        flagged = set(frame.sample_id[frame.flagged])
        flagged_val = sorted(flagged) if part == "val" else flagged_val
        checks.append({"split": split, "part": part, "images": len(frame),
                       "flipped": len(wrong), "flagged": len(flagged),
                       "precision": len(flagged & wrong) / max(len(flagged), 1),
                       "recall": len(flagged & wrong) / max(len(wrong), 1)})
    flipped = flipped_all[run.split.train]
    rows = [{"split": split, "query": "none", "k": 0, **test_errors(run, data.labels)}]
    ks = [int(round(f * len(flipped))) for f in a.fractions]
    for query in QUERIES:
        t = time.perf_counter()
        s = run.influence(run.query_loss(exclude=flagged_val if query != QUERIES[0] else ()))
        seconds = time.perf_counter() - t
        found = {"recall@10%": recall_at(s, flipped, 0.1), "recall@20%": recall_at(s, flipped, 0.2),
                 "auc": roc_auc_score(flipped, -s), "score_seconds": seconds,
                 "val_left_out": len(flagged_val) if query != QUERIES[0] else 0}
        for k in ks:
            child = run.retrain(common.most_suspicious(run, s, k), a.mode)
            rows.append({"split": split, "query": query, "k": k, **found,
                         **test_errors(child, data.labels)})
    print(f"split {split}: validation flagged {checks[0]['flagged']} (flipped "
          f"{checks[0]['flipped']}, precision {checks[0]['precision']:.2f}) · SGD-influence "
          "recall@10% " + " / ".join(f"{r['recall@10%']:.3f}" for r in rows[1::len(ks)])
          + f" ({time.perf_counter() - began:.0f} s)", flush=True)
    return rows, checks


def eval_tables(rows: pd.DataFrame, checks: pd.DataFrame):
    """(label check of validation/test, SGD-influence's recall per query, test errors after
    removal: mean ± std, change against no removal and the paired t-test p of every
    comparison, Holm-corrected over all of them)."""
    from scipy.stats import ttest_rel
    from statsmodels.stats.multitest import multipletests

    check = (checks.groupby("part", sort=False)
             .agg(**{c: (c, common.mean_std) for c in ["images", "flipped", "flagged",
                                                        "precision", "recall"]}).reset_index())
    found = rows[rows.query_name != "none"].drop_duplicates(["split", "query_name"])
    recall = (found.groupby("query_name", sort=False)
              .agg(**{c: (c, common.mean_std) for c in ["recall@10%", "recall@20%", "auc",
                                                        "val_left_out", "score_seconds"]})
              .reset_index().rename(columns={"query_name": "query (mean loss over)"}))
    measures = ["recall@10%", "recall@20%", "auc"]
    without, checked = (found[found.query_name == q].set_index("split") for q in QUERIES)
    p = [ttest_rel(checked[m], without.loc[checked.index, m]).pvalue for m in measures]
    recall = pd.concat([recall, pd.DataFrame(
        [{"query (mean loss over)": "difference (left out − all), paired t p (Holm over 3)",
          **{m: f"{(checked[m] - without.loc[checked.index, m]).mean():+.3f}, p {h:.2g}"
             for m, h in zip(measures, multipletests(p, method="holm")[1])}}])],
        ignore_index=True).fillna("")
    base = rows[rows.query_name == "none"].set_index("split")
    removed = rows[rows.query_name != "none"]
    table, p_values = [], []  # p_values: (row, column, p)
    for kind in ("noisy", "true"):
        column = f"error ({kind} labels)"
        for (query, k), part in removed.groupby(["query_name", "k"], sort=False):
            part = part.set_index("split")
            change = part[column] - base.loc[part.index, column]
            table.append({"test labels": kind, "query (mean loss over)": query, "k": k,
                          "test error %": common.mean_std(100 * part[column]),
                          "change vs none (pp)": f"{100 * change.mean():+.2f}"})
            p_values.append((len(table) - 1, "p vs none",
                             ttest_rel(part[column], base.loc[part.index, column]).pvalue))
            if query == QUERIES[1]:
                other = removed[(removed.query_name == QUERIES[0]) & (removed.k == k)
                                ].set_index("split").loc[part.index, column]
                p_values.append((len(table) - 1, "p vs all validation images",
                                 ttest_rel(part[column], other).pvalue))
    finite = [j for j, (_, _, p) in enumerate(p_values) if np.isfinite(p)]
    holm = multipletests([p_values[j][2] for j in finite], method="holm")[1] if finite else []
    for j, h in zip(finite, holm):
        row, name, raw = p_values[j]
        table[row][f"{name} (paired t)"] = float(raw)
        table[row][f"{name} (Holm)"] = float(h)
    return check, recall, pd.DataFrame(table).astype(object).fillna("")  # "": no such test


def eval_report(rows: pd.DataFrame, checks: pd.DataFrame, a, out: Path) -> dict:
    rows = rows.rename(columns={"query": "query_name"})
    check, recall, table = eval_tables(rows, checks)
    base = rows[rows.query_name == "none"]
    common.write_report(out, a.name_out, "Label noise in the yardstick: checking the validation "
                        "labels first", common.command(), [
        f"Data: {a.data_note}; {a.noise:.0%} of the training, validation and test labels "
        "flipped to a random other class (the same training flips as without `--noisy-eval`). "
        f"CNN `{a.model_note}`, plain SGD, batch 64, η = {a.lr}, {a.epochs} epochs; "
        f"{checks['split'].nunique()} splits. The label check of the validation and test images "
        "uses the trained model's own probabilities (it never trained on them) and cleanlab's "
        "`find_label_issues`. SGD-influence's query is the mean loss over all validation images, "
        "or over those the check does not flag. Removal retrains by counterfactual SGD (mode "
        f"{a.mode}). Test error is counted on the noisy test labels (what a user sees) and on "
        "the true ones.",
        "Label check of the validation and test images (mean ± std over splits):\n\n"
        + common.markdown(check),
        "SGD-influence with either query: recall of the flipped training labels within its "
        "top 10% / 20%, ROC AUC, validation images left out, seconds:\n\n"
        + common.markdown(recall),
        f"Test error after removing SGD-influence's top-k and retraining; no removal: "
        f"{common.mean_std(100 * base['error (noisy labels)'])} % on the noisy test labels, "
        f"{common.mean_std(100 * base['error (true labels)'])} % on the true ones. p: paired "
        "t-test over splits, Holm-corrected over every p in this table:\n\n"
        + common.markdown(table),
        f"Per-split values: `{a.name_out}.csv`, `{a.name_out}-checks.csv`."])
    found = rows[rows.query_name != "none"].groupby("query_name")["recall@10%"].mean()
    val = checks[checks.part == "val"]
    return {"recall10_sgd": float(found[QUERIES[0]]),
            "recall10_sgd_checked": float(found[QUERIES[1]]),
            "val_flagged": float(val.flagged.mean()), "val_precision": float(val.precision.mean()),
            "val_recall": float(val.recall.mean())}


def noisy_eval(data, out: Path, a) -> dict:
    return by_split(data, out, a, "noisy-eval", "checks", eval_split, eval_report)


def by_split(data, out: Path, a, stem: str, suffix: str, one_split, report) -> dict:
    """An experiment of two tables kept per split in <stem>.csv and <stem>-<suffix>.csv (with
    --resume, splits stored there are not computed again): one_split(data, split, a) gives a
    split's rows of both, report(rows, rows of the second, a, out) the result."""
    a.name_out = a.name_out.replace("noisy", stem, 1)
    if not a.quick and a.epochs != 6:
        a.name_out += f"-{a.epochs}epochs"
    files = [out / f"{a.name_out}.csv", out / f"{a.name_out}-{suffix}.csv"]
    rows, second = [stored(f) if a.resume else [] for f in files]
    todo = [(split, a) for split in range(a.splits) if not any(r["split"] == split
                                                               for r in second)]
    for r, c in common.map_splits(one_split, data, todo, a):  # --ray: splits as tasks
        rows, second = rows + r, second + c
        for f, part in zip(files, (rows, second)):
            pd.DataFrame(part).to_csv(f, index=False)
    result = report(pd.DataFrame(rows), pd.DataFrame(second), a, out)
    common.summary(**result)
    return result


# --- --fix: fixing labels instead of removing images (relabel effects, influence.relabel) -------
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
    mode a.mode in one vectorised run (counterfactual.outcomes)."""
    from influence import cleaning, relabel

    began = time.perf_counter()
    noisy, flipped_all = with_flipped_training_labels(data, a.noise, split)
    run = common.train_run(noisy, split, a.epochs, a.name)
    base = common.test_error(run)
    flipped, true = flipped_all[run.split.train], data.labels[run.split.train]
    given = run.objective.y.numpy()
    t = time.perf_counter()
    removal, effects = run.relabel_influence()
    relabel_seconds = time.perf_counter() - t
    best, effect = relabel.best_labels(effects, given)
    checked = label_check.confident_learning(run)
    suggested = np.array([run.data.classes.index(c) for c in checked.suggested_label])
    n, ids = len(given), run.train_ids
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
                "both agree, flipped": float((best == suggested)[flipped].mean()),
                "right where both agree, flipped": right(best, flipped & (best == suggested))}
    rounds = {}  # (way, k) → (removed ids, fixes)
    for f in a.fix_fractions:
        k = int(round(f * n))
        top, top_check = (np.argsort(s, kind="stable")[:k]
                          for s in (effect, checked.influence.to_numpy()))
        rounds["fix", k] = ([], {ids[j]: int(best[j]) for j in top})
        rounds["remove", k] = ([ids[j] for j in top], {})
        rounds["fix where both agree", k] = ([], {ids[j]: int(best[j]) for j in top
                                                  if best[j] == suggested[j]})
        rounds["label check: fix", k] = ([], {ids[j]: int(suggested[j]) for j in top_check
                                              if suggested[j] != given[j]})
        rounds["label check: remove", k] = ([ids[j] for j in top_check], {})
        top_removal = np.argsort(removal, kind="stable")[:k]
        rounds["remove (removal ranking)", k] = ([ids[j] for j in top_removal], {})
        rounds["fix to the check's label (removal ranking)", k] = (
            [ids[j] for j in top_removal if suggested[j] == given[j]],
            {ids[j]: int(suggested[j]) for j in top_removal if suggested[j] != given[j]})
    sizes = sorted({(len(r), len(fx)) for r, fx in rounds.values()})
    flagged = {ids[j]: int(suggested[j]) for j in np.flatnonzero(checked.flagged.to_numpy())
               if suggested[j] != given[j]}  # the label check's: what a random fix draws from
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
    holm = common.holm(p)
    for (row, name, _), raw, corrected in zip(p_values, p, holm):
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


def fix_labels(data, out: Path, a) -> dict:
    return by_split(data, out, a, "noisy-fix", "labels", fix_split, fix_report)


def in_registry_order(rows: list[dict]) -> list[dict]:
    """Rows by split, then method in the registry's order (as if computed at once)."""
    return sorted(rows, key=lambda r: (r["split"], common.METHODS.index(r["method"])))


def stored(path: Path) -> list[dict]:
    """Per-split rows kept in a CSV (none if it does not exist yet)."""
    return pd.read_csv(path).to_dict("records") if path.exists() else []


if __name__ == "__main__":
    main()
