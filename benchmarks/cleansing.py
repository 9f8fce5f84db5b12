"""Figure 2 of the paper (Section 7.2), scaled to a 2-core CPU: does removing the instances a
method flags, and retraining, lower the test misclassification?

Per split: the real MNIST test set (10,000 images) split 60/20/20 into train/validation/test;
the paper's MNIST CNN trained by plain SGD (batch 64, η = 0.05, no momentum, no weight decay)
for --epochs epochs (the paper: 20); every method scores the training instances (SGD-influence
and TracIn and K&L on the mean validation loss); for each k the k most harmful/suspicious are
removed and the model is retrained by counterfactual SGD (Run.retrain; mode 'last' = the
paper's main protocol: the last epoch re-run without them). Test misclassification is compared
with no removal on the same split: mean ± std and a paired t-test over splits.

With --selection F (a share of the validation images held out of the query, as the app does),
also the "suggested k" row: per split, the k-curve of each --curve-methods ranking
(influence.kcurve: the top-k and random sets of each size removed for every k of --ks and 0,
all in one vectorised retraining, judged on the selection part) suggests a k; its test error is compared with no
removal and with the best fixed k chosen in hindsight (the k of --ks with the lowest mean test
error over all splits), by paired t-tests over splits, Holm-corrected.

    python benchmarks/cleansing.py --splits 10 --epochs 6
    python benchmarks/cleansing.py --quick     # digits, 2 splits, small k
    python benchmarks/cleansing.py --splits 10 --epochs 6 --ray HEAD:6379   # splits on a cluster
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

import common
import datasets
from common import LABELS
from influence import kcurve
from influence.compare import holm


def one_split(data, split: int, a) -> tuple[list[dict], list[dict]]:
    began = time.perf_counter()
    if a.flip:  # the app's demo: a share of the training labels flipped, the rest clean
        data = datasets.flip_training_labels(data, a.flip, 0.2, 0.2, split)[0]
    run = common.train_run(data, split, a.epochs, a.name, a.selection)
    base = common.test_error(run)
    scores, seconds = common.method_scores(run, a.methods, split)
    curves = [row for m in a.curve_methods for row in curve_rows(run, m, scores[m], a)] \
        if a.selection else []
    for r in curves:
        r.update(split=split, base_error=base)
    rows = []
    for mode in a.modes:
        chosen = scores if mode == "last" else {m: scores[m] for m in a.all_methods}
        rows += common.retrain_errors(run, chosen, a.ks, mode)
    for r in rows:
        r.update(split=split, base_error=base, score_seconds=seconds[r["method"]])
    print(f"split {split}: no removal {100 * base:.2f}% · "
          + " · ".join(f"{m}@{a.ks[-1]} {100 * r['error']:.2f}%" for m in a.methods
                       for r in rows if r["method"] == m and r["k"] == a.ks[-1]
                       and r["mode"] == a.modes[0])
          + "".join(f" · {r['method']} suggests k={r['suggested']}" for r in curves
                    if r["k"] == 0)
          + f" ({time.perf_counter() - began:.0f} s)", flush=True)
    return rows, curves


def curve_rows(run, method: str, scores, a) -> list[dict]:
    """The k-curve of one ranking on the selection part with the app's random sets of each size
    (the suggestion must beat them), one row per top k with the test error of the same
    retrained model."""
    frame, found = kcurve.curve(run, run.ranking(scores), a.modes[0], seed=run.config.seed,
                                ks=[0, *a.ks])
    frame = frame[frame.kind == "top"]
    return [{"method": method, "k": int(r.k), "selection_loss": r.selection_loss,
             "selection_error": r.selection_error, "error": r.test_error,
             "suggested": found["k"], "best_k": found["best_k"], "helps": found["helps"],
             "p_holm": found["p_holm"]} for r in frame.itertuples()]


def suggested_k(curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per ranking: the test error at the suggested k, at the best fixed k in hindsight and at
    k = 0 per split (wide), and the paired comparisons (t-test over splits, Holm over the
    table)."""
    wide, tests = [], []
    for method, part in curves.groupby("method", sort=False):
        mean = part.groupby("k")["error"].mean()
        hindsight = int(mean.idxmin())
        per = part.groupby("split").apply(lambda g: pd.Series({
            "suggested": int(g.suggested.iloc[0]), "helps": bool(g.helps.iloc[0]),
            "at_suggested": g.error[g.k == g.suggested.iloc[0]].iloc[0],
            "at_hindsight": g.error[g.k == hindsight].iloc[0],
            "at_none": g.error[g.k == 0].iloc[0]}), include_groups=False)
        wide.append(per.assign(method=LABELS[method], hindsight_k=hindsight).reset_index())
        for other, what in (("at_none", "k = 0 (no removal)"),
                            ("at_hindsight", f"best fixed k in hindsight (k = {hindsight})")):
            diff = per.at_suggested - per[other]
            p = ttest_rel(per.at_suggested, per[other]).pvalue if diff.any() else 1.0
            tests.append({"method": LABELS[method], "suggested k vs": what,
                          "splits": len(per),
                          "test error % at suggested k": common.mean_std(100 * per.at_suggested),
                          "test error % of the other": common.mean_std(100 * per[other]),
                          "change (pp)": f"{100 * diff.mean():+.3f}",
                          "p (paired t)": float(p) if np.isfinite(p) else np.nan})
    tests = pd.DataFrame(tests)
    tests.insert(tests.columns.get_loc("p (paired t)") + 1, "p (Holm)",
                 holm(tests["p (paired t)"]))
    return pd.concat(wide, ignore_index=True), tests


def curve_sections(curves: pd.DataFrame, a) -> tuple[list[str], dict]:
    """The report's "suggested k" sections and the figures of the summary line."""
    wide, tests = suggested_k(curves)
    picks = (wide.groupby("method", sort=False)
             .agg(**{"suggested k per split": ("suggested", lambda s: ", ".join(map(str, s))),
                     "splits where removal helps (selection, Holm)": ("helps", "sum")})
             .reset_index())
    lead = wide[wide.method == wide.method.iloc[0]]
    figures = {"suggested_error": float(lead.at_suggested.mean()),
               "hindsight_error": float(lead.at_hindsight.mean()),
               "hindsight_k": int(lead.hindsight_k.iloc[0]),
               "none_error": float(lead.at_none.mean()),
               "p_suggested_vs_none_holm": float(tests["p (Holm)"].iloc[0]),
               "p_suggested_vs_hindsight_holm": float(tests["p (Holm)"].iloc[1])}
    return [
        f"**Suggested k** (the app's k-curve): {a.selection:.0%} of the validation images are "
        "held out of the query as the selection part; each ranking's curve removes its top k "
        f"for k ∈ {{0, {', '.join(map(str, a.ks))}}} and {kcurve.CONTROLS} random sets of each "
        f"size (one vectorised retraining, mode {a.modes[0]}) and suggests, among the k whose "
        "top k beats the random sets of its size on selection error and loss (prediction "
        "interval, Holm over the k tried) and is not worse than removing nothing, the one with "
        "the lowest selection error; else k = 0. The test images are never used to choose k. "
        "The best "
        "fixed k in hindsight is chosen on the test error averaged over all splits: an "
        "optimistic bound that no user can reach.\n\n" + common.markdown(picks),
        "Test error at the suggested k against no removal and against the best fixed k in "
        "hindsight, paired over splits:\n\n" + common.markdown(tests) + "\n\n"
        + common.holm_note(tests)], figures


def report(frame: pd.DataFrame, a, out: Path, curves: pd.DataFrame | None = None) -> dict:
    frame = frame.assign(method=frame["method"].map(LABELS))
    table = common.paired_summary(frame, ["mode", "method", "k"])
    base = frame.drop_duplicates("split")["base_error"]
    wide = table.pivot_table(index=["mode", "method"], columns="k", values="test error %",
                             aggfunc="first", sort=False).reset_index()
    timing = (frame.drop_duplicates(["split", "method"]).groupby("method", sort=False)
              ["score_seconds"].mean().round(1).reset_index()
              .rename(columns={"score_seconds": "seconds to score (mean)"}))
    png = out / f"{a.name_out}.png"
    last = table[table["mode"] == a.modes[0]]
    common.line_chart(png, last.assign(change=100 * last["_change"], std=100 * last["_dstd"]),
                      "k", "change", "std", "method",
                      f"Test error change after removing the top-k and retraining\n"
                      f"({a.name}, retrain {a.modes[0]}, mean ± std of the paired change "
                      f"over {frame['split'].nunique()} splits)",
                      "k (instances removed)", "test misclassification change (pp)",
                      baseline=0.0)
    extra, figures = curve_sections(curves, a) if curves is not None and len(curves) \
        else ([], {})
    common.write_report(out, a.name_out, "Figure 2 reproduction: data cleansing on "
                        + ("MNIST" if a.name == "mnist-10k" else a.name), common.command(), [
        f"Data: {a.data_note}; CNN `{a.model_note}`; plain SGD, batch 64, η = "
        f"{a.lr}, {a.epochs} epochs"
        + (f"; {a.flip:.0%} of the training labels flipped to a random other class per split "
           "(validation and test labels clean)" if a.flip else "")
        + (" (the paper: 20 epochs on 50,000 images; reduced to fit 2 shared CPU cores)"
           if a.name == "mnist-10k" else "")
        + f". Retraining: counterfactual SGD, mode(s) {', '.join(a.modes)}. "
        f"{frame['split'].nunique()} splits."
        + (" K&L: Hessian estimated on 500 random training instances, 20 MINRES steps, "
           "damping 0.01." if "kl" in a.methods else ""),
        f"No removal: test error {common.mean_std(100 * base)} %.",
        "Test misclassification (%) after removing the top-k, mean ± std over splits:\n\n"
        + common.markdown(wide),
        "Change against no removal on the same split, with the paired t-test:\n\n"
        + common.markdown(table.filter(regex="^[^_]")) + "\n\n" + common.holm_note(table),
        "Scoring time per method (one core):\n\n" + common.markdown(timing), *extra,
        f"![chart]({png.name})\n\nPer-split values: `{a.name_out}.csv`"
        + (f", the k-curves: `{a.name_out}-curve.csv`." if extra else ".")])
    lead = "sgd" if "sgd" in a.methods else a.methods[0]
    sgd = table[(table["method"] == LABELS[lead]) & (table["mode"] == a.modes[0])]
    best = sgd.loc[sgd["_mean"].idxmin()]
    result = {"no_removal": float(base.mean()), "sgd_best_error": float(best["_mean"]),
              "sgd_best_k": int(best["k"]), "sgd_best_p": float(best["p (paired t)"]),
              "sgd_best_p_holm": float(best["p (Holm)"])}
    rand = table[(table["method"] == "Random") & (table["mode"] == a.modes[0])]
    if len(rand):
        result["random_error_at_best_k"] = float(rand.loc[rand["k"] == best["k"], "_mean"].iloc[0])
    return result | figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None,
                        help="SGD epochs (default 6; 8 with --quick)")
    parser.add_argument("--ks", default="10,30,100,300,1000")
    parser.add_argument("--mode", choices=["last", "all", "both"], default="last",
                        help="retraining: last epoch only (the paper's main protocol), all, "
                             "or both (all only for SGD-influence and random)")
    parser.add_argument("--methods", default=",".join(common.METHODS))
    common.add_data_option(parser)
    common.add_resume_option(parser)
    parser.add_argument("--selection", type=float, default=0.0,
                        help="share of the validation images held out of the query as the "
                             "selection part; above 0: also the suggested-k row (default 0: "
                             "the whole validation part is the query, as in the paper)")
    parser.add_argument("--curve-methods", default="sgd",
                        help="the rankings whose k-curve suggests a k (with --selection)")
    parser.add_argument("--flip", type=float, default=0.0,
                        help="flip this share of the training labels of every split to a random "
                             "other class (the app's demo); validation and test stay clean")
    parser.add_argument("--digits", action="store_true",
                        help="scikit-learn's digits instead of MNIST, without --quick's cuts")
    common.add_common_options(parser)
    common.add_ray_option(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.epochs, a.ks = min(a.splits, 2), a.epochs or 8, "5,20"
    a.epochs = a.epochs or 6
    common.setup(a.threads)
    a.ks = [int(k) for k in a.ks.split(",")]
    a.methods = a.methods.split(",")
    a.curve_methods = a.curve_methods.split(",") if a.selection else []
    if not set(a.curve_methods) <= set(a.methods):
        parser.error("every --curve-methods ranking must be one of --methods")
    a.modes = ["last", "all"] if a.mode == "both" else [a.mode]
    a.all_methods = [m for m in a.methods if m in ("sgd", "random")] if a.mode == "both" \
        else a.methods
    data, out = common.prepare_experiment(a, "cleansing")
    a.name_out += ("-selection" if a.selection else "") + (f"-flip{a.flip:g}" if a.flip else "")
    csv, curve_csv = out / f"{a.name_out}.csv", out / f"{a.name_out}-curve.csv"
    rows = pd.read_csv(csv).to_dict("records") if a.resume and csv.exists() else []
    curves = pd.read_csv(curve_csv).to_dict("records") \
        if a.resume and a.selection and curve_csv.exists() else []
    done = {r["split"] for r in rows}
    todo = [(split, a) for split in range(a.splits) if split not in done]
    for more, more_curves in common.map_splits(one_split, data, todo, a):  # --ray: as tasks
        rows, curves = rows + more, curves + more_curves
        pd.DataFrame(rows).to_csv(csv, index=False)  # partial results survive an interruption
        if a.selection:
            pd.DataFrame(curves).to_csv(curve_csv, index=False)
    result = report(pd.DataFrame(rows), a, out, pd.DataFrame(curves) if curves else None)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
