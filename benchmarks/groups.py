"""The trust check on groups: do the summed scores of a set of training images predict what
removing the whole set and retraining does to the validation loss?

Users remove groups, not single images, so this checks the estimates on groups (issue 10 e).
Per split (seed) and data set:
* digits: scikit-learn's 8×8 digits with the app's defaults (model "auto" = the small CNN, the
  default epochs and the preset's η, batch 64); MNIST: the 10,000-image MNIST test set with the
  paper's CNN, 6 epochs (as in cleansing.py); both split 60/20/20 into train/validation/test.
* SGD-influence (all epochs and last epoch), Koh & Liang and TracIn score every training image
  on the mean validation loss.
* G random groups of 5 % of the training set, the same for every method: a group's predicted
  change is the sum of its members' scores; the actual change is the validation loss retrained
  without the group minus that of an empty removal retrained in the same vectorised run
  (counterfactual.outcomes, as trust.retraining_agreement does). Per method: the Spearman correlation of predicted and
  actual over the groups, the linear datamodeling score of TRAK (Park et al., 2023).
* Each method's top-k (its k lowest scores) removed: predicted (the sum of the k scores)
  against actual change, as a ratio and a sign.
Retraining is by counterfactual SGD (Definition 2) in the mode each method estimates: all
epochs, the last epoch only for SGD-influence (last epoch). A few groups are also retrained one
at a time (Run.retrain) to show how reproducible the actual change itself is in float32.

    python benchmarks/groups.py --splits 5 --resume
    python benchmarks/groups.py --quick      # digits, 2 splits, few groups, fewer epochs
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import common
from common import LABELS, methods
from influence.compare import holm
from influence.counterfactual import outcomes

METHODS = ["sgd", "sgd-last", "kl", "tracin"]
MODE = {m: methods.get(m).retrain_mode for m in METHODS}  # the retraining each one estimates
EPOCHS = {"digits": None, "mnist": 6}  # None: the app's default (RunConfig)
KS = {"digits": "10,50,200", "mnist": "10,100,1000"}
TITLE = {"digits": "digits (app defaults)", "mnist": "MNIST CNN"}
LAST_ON_ALL = "sgd-last@all"  # SGD-influence (last epoch) judged against all-epoch retraining


def random_groups(train_ids: list[str], count: int, share: float, seed: int) -> list[list[str]]:
    """`count` random groups of `share` of the training set (each drawn without replacement)."""
    rng = np.random.default_rng(seed)
    size = max(1, round(share * len(train_ids)))
    return [list(rng.choice(train_ids, size, replace=False)) for _ in range(count)]


def changes(run, removals: list[list[str]], mode: str) -> pd.DataFrame:
    """Actual change of validation loss and of test error per removal: retrained without it
    minus retrained without nothing, all in one vectorised counterfactual SGD run."""
    out = outcomes(run, [[], *removals], mode)
    return (out[["query_loss", "test_error"]] - out.iloc[0][["query_loss", "test_error"]]
            ).iloc[1:].reset_index(drop=True)


def one_split(data, name: str, split: int, a) -> tuple[list[dict], list[dict], dict]:
    began = time.perf_counter()
    run = common.train_run(data, split, a.epochs or EPOCHS[name], name)
    times = {"data": name, "split": split, "n_train": len(run.train_ids),
             "epochs": run.config.epochs, "steps": run.schedule.steps, "lr": run.config.lr,
             "model": run.preset.name, "val_loss": run.metrics["val_loss"],
             "train_s": run.metrics["seconds"]}
    scores, seconds = common.method_scores(run, METHODS, split)
    times |= {f"score_s_{m}": s for m, s in seconds.items()}
    groups = random_groups(run.train_ids, a.groups, a.share, split)
    ks = [k for k in a.ks[name] if k < len(run.train_ids)]
    top = {(m, k): common.most_suspicious(run, scores[m], k) for m in METHODS for k in ks}
    actual_groups, topk = {}, []
    for mode in ("all", "last"):
        own = [m for m in METHODS if MODE[m] == mode]
        t = time.perf_counter()
        actual = changes(run, groups + [top[m, k] for m in own for k in ks], mode)
        times |= {f"outcomes_s_{mode}": time.perf_counter() - t,
                  f"masks_{mode}": 1 + len(groups) + len(own) * len(ks)}
        actual_groups[mode] = actual.query_loss.to_numpy()[:len(groups)]
        for (m, k), change in zip([(m, k) for m in own for k in ks],
                                  actual.iloc[len(groups):].itertuples()):
            topk.append({"data": name, "split": split, "method": m, "mode": mode, "k": k,
                         "predicted": float(scores[m][np.argsort(scores[m], kind="stable")[:k]]
                                            .sum()), "actual": change.query_loss,
                         "test_error_change": change.test_error})
    t = time.perf_counter()  # the truth's own reproducibility: a few groups one at a time
    base = run.evaluate("val")[0]
    again = [run.retrain(g, "all").evaluate("val")[0] - base for g in groups[:a.recheck]]
    times |= {"recheck_s": time.perf_counter() - t, "rechecked": len(again)}
    position = [[run.position[sid] for sid in g] for g in groups]
    rows = [{"data": name, "split": split, "group": g, "size": len(groups[g]),
             "actual_all": actual_groups["all"][g], "actual_last": actual_groups["last"][g],
             "one_at_a_time_all": again[g] if g < len(again) else np.nan,
             **{f"predicted_{m}": float(scores[m][position[g]].sum()) for m in METHODS}}
            for g in range(len(groups))]
    times["total_s"] = time.perf_counter() - began
    frame = pd.DataFrame(rows)
    print(f"{name} split {split}: group Spearman "
          + " · ".join(f"{m} {spearman(frame, m):.2f}" for m in METHODS)
          + f" ({times['total_s']:.0f} s)", flush=True)
    return rows, topk, times


def truth_of(method: str) -> str:
    return "actual_all" if method == LAST_ON_ALL else f"actual_{MODE[method]}"


def spearman(groups: pd.DataFrame, method: str) -> float:
    """Spearman correlation over one split's groups: summed scores against retrained change."""
    predicted = groups[f"predicted_{method.split('@')[0]}"]
    return float(stats.spearmanr(predicted, groups[truth_of(method)]).statistic)


def per_split(groups: pd.DataFrame) -> pd.DataFrame:
    """One row per data set, split and method: group Spearman and group sign agreement."""
    rows = []
    for (name, split), part in groups.groupby(["data", "split"], sort=False):
        for m in [*METHODS, LAST_ON_ALL]:
            predicted = part[f"predicted_{m.split('@')[0]}"]
            rows.append({"data": name, "split": split, "method": m,
                         "spearman": spearman(part, m),
                         "sign": float(np.mean(np.sign(predicted) == np.sign(part[truth_of(m)])))})
    return pd.DataFrame(rows)


def method_name(m: str) -> str:
    return (f"{LABELS['sgd-last']}, judged on all-epoch retraining" if m == LAST_ON_ALL
            else LABELS[m])


def spearman_table(rho: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over splits, with a one-sample t-test of 'no correlation' (Holm over the
    table)."""
    rows = []
    for (name, m), part in rho.groupby(["data", "method"], sort=False):
        p = stats.ttest_1samp(part.spearman, 0).pvalue if len(part) > 1 else np.nan
        rows.append({"data": TITLE[name], "method": method_name(m),
                     "retraining": "all" if m == LAST_ON_ALL else MODE[m],
                     "splits": len(part), "group Spearman": common.mean_std(part.spearman),
                     "group sign agreement": common.mean_std(part.sign),
                     "p (t, ρ = 0)": float(p), "_mean": part.spearman.mean()})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p (t, ρ = 0)"])
    return table


def paired_table(rho: pd.DataFrame) -> pd.DataFrame:
    """SGD-influence against each other method, per data set: the per-split difference of the
    group Spearman, paired t-test over splits, Holm over the table."""
    rows = []
    for name, part in rho.groupby("data", sort=False):
        wide = part.pivot(index="split", columns="method", values="spearman")
        for other in METHODS[1:]:
            diff = wide["sgd"] - wide[other]
            p = stats.ttest_rel(wide["sgd"], wide[other]).pvalue if len(wide) > 1 else np.nan
            rows.append({"data": TITLE[name], "comparison": f"{LABELS['sgd']} − "
                         f"{LABELS[other]}", "splits": len(wide),
                         "Spearman difference": common.mean_std(diff),
                         "p (paired t)": float(p)})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p (paired t)"])
    return table


def topk_table(topk: pd.DataFrame) -> pd.DataFrame:
    topk = topk.assign(ratio=topk.predicted / topk.actual,
                       sign=np.sign(topk.predicted) == np.sign(topk.actual))
    rows = []
    for (name, m, k), part in topk.groupby(["data", "method", "k"], sort=False):
        rows.append({"data": TITLE[name], "method": LABELS[m], "retraining": MODE[m], "k": k,
                     "predicted": f"{part.predicted.mean():+.2e}",
                     "actual": f"{part.actual.mean():+.2e} ± {part.actual.std(ddof=0):.1e}",
                     "predicted / actual": common.mean_std(part.ratio),
                     "median ratio": f"{part.ratio.median():.3g}",
                     "ratio of the means": f"{part.predicted.mean() / part.actual.mean():.3g}",
                     "sign right": f"{part.sign.sum()}/{len(part)}", "_ratio": part.ratio.mean(),
                     "_sign": part.sign.mean()})
    return pd.DataFrame(rows)


def noise_table(groups: pd.DataFrame) -> pd.DataFrame:
    """How reproducible the actual change is: the vectorised retraining against the same
    removal retrained one at a time (both float32 SGD; they differ by rounding only), beside
    the spread of the actual changes over the groups."""
    rows = []
    for name, part in groups.groupby("data", sort=False):
        both = part.dropna(subset=["one_at_a_time_all"])
        if both.empty:
            continue
        gap = (both.actual_all - both.one_at_a_time_all).abs()
        rho = stats.spearmanr(both.actual_all, both.one_at_a_time_all).statistic
        rows.append({"data": TITLE[name], "groups compared": len(both),
                     "mean |vectorised − one at a time|": f"{gap.mean():.1e}",
                     "largest": f"{gap.max():.1e}",
                     "std of the actual change over groups": f"{part.actual_all.std():.1e}",
                     "Spearman (vectorised, one at a time)": f"{rho:.3f}"})
    return pd.DataFrame(rows)


def time_table(times: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per split of each part, one column per data set."""
    parts = {"training": "train_s", **{f"scoring: {LABELS[m]}": f"score_s_{m}" for m in METHODS},
             "retraining, all epochs (vectorised)": "outcomes_s_all",
             "retraining, last epoch (vectorised)": "outcomes_s_last",
             "re-check: groups retrained one at a time": "recheck_s", "whole split": "total_s"}
    rows = []
    for label, column in parts.items():
        row = {"part": label}
        for name, part in times.groupby("data", sort=False):
            extra = ""
            if column.startswith("outcomes"):
                extra = f" ({int(part[column.replace('outcomes_s', 'masks')].iloc[0])} masks)"
            elif column == "recheck_s":
                extra = f" ({int(part.rechecked.iloc[0])} runs)"
            row[TITLE[name]] = f"{part[column].mean():.1f}{extra}"
        rows.append(row)
    return pd.DataFrame(rows)


def scatter(png: Path, groups: pd.DataFrame, rho: pd.DataFrame) -> None:
    """Predicted (summed scores) against actual change per group: one row per data set, one
    column per method, one colour per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(groups.data))
    fig, axes = plt.subplots(len(names), len(METHODS), figsize=(4 * len(METHODS),
                             3.6 * len(names)), dpi=110, squeeze=False)
    for row, name in zip(axes, names):
        part = groups[groups.data == name]
        for ax, m in zip(row, METHODS):
            for split, s in part.groupby("split"):
                ax.scatter(s[f"predicted_{m}"], s[truth_of(m)], s=12, label=f"split {split}")
            mean = rho[(rho.data == name) & (rho.method == m)].spearman.mean()
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            lo, hi = max(x0, y0), min(x1, y1)  # actual = predicted, where it is in view
            if lo < hi:
                ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=0.8,
                        label="actual = predicted")
                ax.set(xlim=(x0, x1), ylim=(y0, y1))
            ax.axhline(0, color="grey", linewidth=0.6)
            ax.axvline(0, color="grey", linewidth=0.6)
            ax.set(title=f"{LABELS[m]}: mean Spearman {mean:.2f}",
                   xlabel="predicted change (sum of scores)",
                   ylabel=f"{TITLE[name]}, groups of {part['size'].iloc[0]}\n"
                          f"actual change (retrain {MODE[m]})")
            ax.ticklabel_format(style="sci", scilimits=(-2, 2))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Random groups of 5 % of the training set: predicted against actual change "
                 "of validation loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def report(groups: pd.DataFrame, topk: pd.DataFrame, times: pd.DataFrame, a,
           out: Path) -> dict:
    rho = per_split(groups)
    table, paired, tops = spearman_table(rho), paired_table(rho), topk_table(topk)
    noise = noise_table(groups)
    png = out / f"{a.name_out}.png"
    scatter(png, groups, rho)
    setup = []
    for name, part in times.groupby("data", sort=False):
        t = part.iloc[0]
        g = groups[groups.data == name]
        ks = ", ".join(map(str, sorted(topk[topk.data == name].k.unique())))
        data = ("scikit-learn's digits (1,797 8×8 images)" if name == "digits" else
                common.data_name(a.data[name], False, a.data_dir))
        setup.append(f"- {TITLE[name]}: {data}, split 60/20/20: {int(t.n_train)} training "
                     f"images; CNN `{t.model}`, plain SGD, batch 64, η = {t.lr:g}, "
                     f"{int(t.epochs)} epochs ({int(t.steps)} steps); validation loss "
                     f"{common.mean_std(part.val_loss)}; {part.split.nunique()} splits; "
                     f"{g.groupby('split').size().iloc[0]} groups of {g['size'].iloc[0]} per "
                     f"split; top-k for k = {ks}.")
    common.write_report(out, a.name_out, "Trust check on groups: summed scores against "
                        "retraining", common.command(), [
        "Setup:\n\n" + "\n".join(setup) + "\n\nScores: SGD-influence (Algorithm 2, all epochs "
        "and last epoch), Koh & Liang (Hessian on 500 random training images, 20 MINRES steps, "
        "damping 0.01) and TracIn (epoch checkpoints), all on the mean validation loss; "
        "negative = removing it is estimated to lower the validation loss. Actual changes: "
        "counterfactual SGD without the set (Definition 2) minus the same without nothing, in "
        "one vectorised run (`counterfactual.outcomes`), retraining all epochs, or the last epoch for "
        "SGD-influence (last epoch), which estimates that.",
        "**Random groups.** Spearman correlation over one split's groups between a group's "
        "summed scores and its actual change (TRAK's linear datamodeling score), and the share "
        "of groups whose sign is predicted right; mean ± std over splits. p: one-sample t-test "
        "of the per-split Spearman against 0.\n\n" + common.markdown(table.filter(regex="^[^_]"))
        + "\n\n" + f"p (Holm): corrected by Holm's method over the {len(table)} tests of this "
        f"table; {int((table['p (Holm)'] < 0.05).sum())} of them below 0.05.",
        "SGD-influence against the others, paired by split (the same groups; SGD-influence "
        "(last epoch) is judged on last-epoch retraining, a different target):\n\n"
        + common.markdown(paired) + "\n\n" + f"p (Holm): over the {len(paired)} tests of this "
        f"table; {int((paired['p (Holm)'] < 0.05).sum())} of them below 0.05.",
        "**Top-k removals.** Each method's k lowest scores removed: predicted change (sum of "
        "the k scores; mean over splits), actual change (mean ± std), their ratio per split "
        "(mean ± std, median), the mean predicted over the mean actual change, and in how many "
        "splits the sign was right. A ratio above 1: the estimate overstates the change; below "
        "0: it has the wrong sign.\n\n" + common.markdown(tops.filter(regex="^[^_]")),
        "**How exact is the actual change?** The same group retrained one at a time "
        "(`Run.retrain`) instead of in the vectorised run: mathematically the same SGD, "
        "different float32 rounding.\n\n" + (common.markdown(noise) if len(noise) else
                                             "(not measured in this run)"),
        "**Seconds per split** (mean; one torch thread on a shared 2-core CPU):\n\n"
        + common.markdown(time_table(times)),
        f"![predicted against actual]({png.name})\n\nPer-split values: `{a.name_out}-groups.csv`"
        f" (every group: sizes, summed scores, actual changes), `{a.name_out}-topk.csv`, "
        f"`{a.name_out}-times.csv`."])
    first = table["data"].iloc[0]
    result = {}
    for m in METHODS:
        key = m.replace("-", "_")
        result[f"spearman_{key}"] = float(table[(table["data"] == first) & (
            table["method"] == LABELS[m])]["_mean"].iloc[0])
        mine = tops[(tops["data"] == first) & (tops["method"] == LABELS[m])]
        result[f"ratio_{key}"] = float(mine["_ratio"].iloc[-1])
        result[f"sign_{key}"] = float(mine["_sign"].iloc[-1])
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--mnist-splits", type=int, default=None,
                        help="splits on MNIST (default: --splits); each takes about 20 minutes "
                             "on 2 cores, so a run may stop short of the digits' count")
    parser.add_argument("--data", default="digits,mnist", help="digits, mnist or both")
    parser.add_argument("--groups", type=int, default=20, help="random groups per split")
    parser.add_argument("--share", type=float, default=0.05, help="group size, of the training set")
    parser.add_argument("--digits-ks", default=KS["digits"])
    parser.add_argument("--mnist-ks", default=KS["mnist"])
    parser.add_argument("--epochs", type=int, default=None,
                        help="SGD epochs for every data set (default: the app's default on "
                             "digits, 6 on MNIST)")
    parser.add_argument("--recheck", type=int, default=5,
                        help="groups per split also retrained one at a time")
    common.add_data_option(parser)
    common.add_resume_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.data, a.groups = min(a.splits, 2), "digits", min(a.groups, 8)
        a.epochs, a.digits_ks, a.recheck = a.epochs or 10, "10,50", 0
    common.setup(a.threads)
    names = a.data.split(",")
    a.ks = {"digits": [int(k) for k in a.digits_ks.split(",")],
            "mnist": [int(k) for k in a.mnist_ks.split(",")]}
    a.data = {name: common.image_data(name == "digits", a.data_dir) for name in names}
    a.name_out = "groups-quick" if a.quick else "groups" if names == ["digits", "mnist"] \
        else f"groups-{'-'.join(names)}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{a.name_out}-{part}.csv" for part in ("groups", "topk", "times")]
    splits = {"digits": a.splits, "mnist": a.splits if a.mnist_splits is None else a.mnist_splits}
    jobs = [(name, split) for name in names for split in range(splits[name])]
    frames = common.kept_tables(files, a.resume, jobs, lambda name, split: one_split(
        a.data[name], name, split, a))
    result = report(*frames, a, out)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
