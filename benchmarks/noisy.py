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

    python benchmarks/noisy.py --splits 5 --epochs 6
    python benchmarks/noisy.py --quick      # digits, 2 splits
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

VAL_FRACTION = TEST_FRACTION = 0.2  # RunConfig's defaults, used by common.train_run


def with_flipped_training_labels(data, fraction: float, seed: int):
    """The data set with `fraction` of its training labels (the split Run makes for `seed`)
    changed to a different class, uniformly; validation and test keep their clean labels and
    the split stays the clean one (ImageSet.relabelled). Also: which positions were flipped."""
    train = data.split(VAL_FRACTION, TEST_FRACTION, seed).train
    rng = np.random.default_rng(seed)
    flipped = rng.choice(train, int(round(fraction * len(train))), replace=False)
    labels, k = data.labels.copy(), len(data.classes)
    labels[flipped] = (labels[flipped] + rng.integers(1, k, len(flipped))) % k
    noisy = data.relabelled(labels, f"{fraction:.0%} of training labels flipped")
    return noisy, np.isin(np.arange(len(labels)), flipped)


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


def one_split(data, split: int, a) -> tuple[list[dict], list[dict], list[dict]]:
    began = time.perf_counter()
    noisy, flipped_all = with_flipped_training_labels(data, a.noise, split)
    run = common.train_run(noisy, split, a.epochs, a.name)
    flipped = flipped_all[run.split.train]
    assert flipped.sum() == flipped_all.sum(), "the run's split differs from the flipped one"
    base = common.test_error(run)
    scores, seconds = common.method_scores(run, a.methods, split)
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
             ] if a.truth else []
    print(f"split {split}: test error {100 * base:.2f}% · recall@10%: "
          + " · ".join(f"{r['method']} {r['recall@10%']:.2f}" for r in ranking)
          + f" ({time.perf_counter() - began:.0f} s)", flush=True)
    return ranking, errors, truth


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
           out: Path) -> dict:
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
        "SGD-influence, K&L and TracIn rank by influence on the mean validation loss; "
        "confident learning (cleanlab's label-quality score) uses 5-fold out-of-fold "
        "probabilities of a logistic regression on the first 50 principal components of the "
        "standardised pixels.",
        "Recall of the flipped instances within each method's top 10% / 20%, and ROC AUC "
        "(mean ± std over splits):\n\n" + common.markdown(recall),
        f"Clean test error after removing the top-k and retraining (mode {a.mode}); no "
        f"removal: {common.mean_std(100 * base)} %:\n\n"
        + common.markdown(table.filter(regex="^[^_]")) + "\n\n" + common.holm_note(table),
        *truth_sections(truth, a),
        f"![recall chart]({png.name})\n\nPer-split values: `{a.name_out}-ranking.csv`, "
        f"`{a.name_out}-errors.csv`" + (f", `{a.name_out}-truth.csv`" if len(truth) else "")
        + "."])
    mean = ranking.groupby("method")[["recall@10%", "recall@20%", "auc"]].mean()
    result = {}
    for key, method in [("sgd", "sgd"), ("cl", "confident-learning"), ("random", "random")]:
        if LABELS[method] in mean.index:
            m = mean.loc[LABELS[method]]
            result |= {f"recall10_{key}": m["recall@10%"], f"recall20_{key}": m["recall@20%"],
                       f"auc_{key}": m["auc"]}
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
    parser.add_argument("--resume", action="store_true")
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.epochs = min(a.splits, 2), a.epochs or 8
    a.epochs = a.epochs or 6
    common.setup(a.threads)
    a.methods, a.fractions = a.methods.split(","), [float(f) for f in a.fractions.split(",")]
    data, out = common.prepare_experiment(a, "noisy")
    if not a.quick and a.epochs != 6:  # e.g. noisy-20epochs: kept apart from the default table
        a.name_out += f"-{a.epochs}epochs"
    if a.truth and not a.quick:
        a.name_out += "-truth"
    files = [out / f"{a.name_out}-{part}.csv" for part in ("ranking", "errors", "truth")]
    ranking, errors, truth = ([pd.read_csv(f).to_dict("records") if f.exists() else []
                               for f in files] if a.resume and files[0].exists() else
                              ([], [], []))
    done = {r["split"] for r in ranking}
    for split in range(a.splits):
        if split in done:
            continue
        r, e, t = one_split(data, split, a)
        ranking, errors, truth = ranking + r, errors + e, truth + t
        for f, rows in zip(files, (ranking, errors, truth)):
            if rows:
                pd.DataFrame(rows).to_csv(f, index=False)
    result = report(pd.DataFrame(ranking), pd.DataFrame(errors), pd.DataFrame(truth), a, out)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
