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

Writes noisy.md, noisy.png, noisy-ranking.csv, noisy-errors.csv, noisy-labels.csv (and
noisy-truth.csv with --truth); the name gets -all with --mode all, -<N>epochs for other than 6
epochs, -truth with --truth, -quick with --quick. With `--resume`, stored per-split results are
kept and only the methods missing for a split are computed (the split's run is trained again,
and must reproduce the stored test error).

    python benchmarks/noisy_find.py --splits 5 --epochs 6
    python benchmarks/noisy_find.py --quick      # digits, 2 splits
    python benchmarks/noisy_find.py --splits 5 --epochs 6 --ray HEAD:6379   # splits on a cluster
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score

import common
from common import LABELS, met, recall_at
from influence import labels as label_check
from influence.compare import holm


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
    noisy, flipped_all = common.flip_labels(data, a.noise, split)
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



def fold_training_comparison(rows: pd.DataFrame) -> list[str]:
    """The two ways of training the fold models, compared split by split: mean difference
    and paired t-test p, Holm-corrected over the measures."""
    from scipy.stats import ttest_rel

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
                          "p (Holm)": holm(p)})
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
    parser = common.label_noise_parser(__doc__, "0.1,0.2", "remove this fraction of the "
                                       "training set (top-k) and retrain")
    parser.add_argument("--methods", default=",".join(common.METHODS))
    parser.add_argument("--truth", type=int, default=0, metavar="N",
                        help="also retrain without each of N flipped and N clean instances")
    a, data, out = common.label_noise_setup(parser, argv, "noisy")
    a.methods = a.methods.split(",")
    if a.truth and not a.quick:
        a.name_out += "-truth"
    files = [out / f"{a.name_out}-{part}.csv"
             for part in ("ranking", "errors", "truth", "labels")]
    ranking, errors, truth, checks = [common.stored(f) if a.resume else [] for f in files]
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


def in_registry_order(rows: list[dict]) -> list[dict]:
    """Rows by split, then method in the registry's order (as if computed at once)."""
    return sorted(rows, key=lambda r: (r["split"], common.METHODS.index(r["method"])))


if __name__ == "__main__":
    main()
