"""Figure 2 of the paper (Section 7.2), scaled to a 2-core CPU: does removing the instances a
method flags, and retraining, lower the test misclassification?

Per split: the real MNIST test set (10,000 images) split 60/20/20 into train/validation/test;
the paper's MNIST CNN trained by plain SGD (batch 64, η = 0.05, no momentum, no weight decay)
for --epochs epochs (the paper: 20); every method scores the training instances (SGD-influence
and TracIn and K&L on the mean validation loss); for each k the k most harmful/suspicious are
removed and the model is retrained by counterfactual SGD (Run.retrain; mode 'last' = the
paper's main protocol: the last epoch re-run without them). Test misclassification is compared
with no removal on the same split: mean ± std and a paired t-test over splits.

    python benchmarks/cleansing.py --splits 10 --epochs 6
    python benchmarks/cleansing.py --quick     # digits, 2 splits, small k
    python benchmarks/cleansing.py --splits 10 --epochs 6 --ray HEAD:6379   # splits on a cluster
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import common
from common import LABELS


def one_split(data, split: int, a) -> list[dict]:
    began = time.perf_counter()
    run = common.train_run(data, split, a.epochs, a.name)
    base = common.test_error(run)
    scores, seconds = common.method_scores(run, a.methods, split)
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
          + f" ({time.perf_counter() - began:.0f} s)", flush=True)
    return rows


def report(frame: pd.DataFrame, a, out: Path) -> dict:
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
    common.write_report(out, a.name_out, "Figure 2 reproduction: data cleansing on MNIST",
                        common.command(), [
        f"Data: {a.data_note}; CNN `{a.model_note}`; plain SGD, batch 64, η = "
        f"{a.lr}, {a.epochs} epochs (the paper: 20 epochs on 50,000 images; reduced to fit "
        f"2 shared CPU cores). Retraining: counterfactual SGD, mode(s) {', '.join(a.modes)}. "
        f"{frame['split'].nunique()} splits."
        + (" K&L: Hessian estimated on 500 random training instances, 20 MINRES steps, "
           "damping 0.01." if "kl" in a.methods else ""),
        f"No removal: test error {common.mean_std(100 * base)} %.",
        "Test misclassification (%) after removing the top-k, mean ± std over splits:\n\n"
        + common.markdown(wide),
        "Change against no removal on the same split, with the paired t-test:\n\n"
        + common.markdown(table.filter(regex="^[^_]")) + "\n\n" + common.holm_note(table),
        "Scoring time per method (one core):\n\n" + common.markdown(timing),
        f"![chart]({png.name})\n\nPer-split values: `{a.name_out}.csv`."])
    lead = "sgd" if "sgd" in a.methods else a.methods[0]
    sgd = table[(table["method"] == LABELS[lead]) & (table["mode"] == a.modes[0])]
    best = sgd.loc[sgd["_mean"].idxmin()]
    result = {"no_removal": float(base.mean()), "sgd_best_error": float(best["_mean"]),
              "sgd_best_k": int(best["k"]), "sgd_best_p": float(best["p (paired t)"]),
              "sgd_best_p_holm": float(best["p (Holm)"])}
    rand = table[(table["method"] == "Random") & (table["mode"] == a.modes[0])]
    if len(rand):
        result["random_error_at_best_k"] = float(rand.loc[rand["k"] == best["k"], "_mean"].iloc[0])
    return result


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
    parser.add_argument("--data-dir", default=None,
                        help="default: the MNIST IDX files in the data folder beside the "
                             "repository (common.SHARED_DATA)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the splits already in the CSV and run only the others")
    common.add_common_options(parser)
    common.add_ray_option(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.epochs, a.ks = min(a.splits, 2), a.epochs or 8, "5,20"
    a.epochs = a.epochs or 6
    common.setup(a.threads)
    a.ks = [int(k) for k in a.ks.split(",")]
    a.methods = a.methods.split(",")
    a.modes = ["last", "all"] if a.mode == "both" else [a.mode]
    a.all_methods = [m for m in a.methods if m in ("sgd", "random")] if a.mode == "both" \
        else a.methods
    data, out = common.prepare_experiment(a, "cleansing")
    csv = out / f"{a.name_out}.csv"
    rows = pd.read_csv(csv).to_dict("records") if a.resume and csv.exists() else []
    done = {r["split"] for r in rows}
    todo = [(split, a) for split in range(a.splits) if split not in done]
    for split_rows in common.map_splits(one_split, data, todo, a):  # --ray: splits as tasks
        rows += split_rows
        pd.DataFrame(rows).to_csv(csv, index=False)  # partial results survive an interruption
    result = report(pd.DataFrame(rows), a, out)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
