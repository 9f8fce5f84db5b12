"""Label noise in the yardstick: the same share of labels flipped in validation and test too.

Per split: the MNIST 10k set split 60/20/20 into train/validation/test; 10% of the labels of
every part flipped uniformly to another class (the same training flips as benchmarks/noisy_find.py);
the paper's MNIST CNN trained by plain SGD on the noisy training labels. Measured: the label
check of the validation and test images (influence.labels.check_part), and SGD-influence with
the flagged validation images left out of the query or not: recall of the flipped training
labels, and test error after removing its top-k and retraining, on the noisy and on the true
test labels.

Writes noisy-eval.md, noisy-eval.csv and noisy-eval-checks.csv (-all with --mode all,
-<N>epochs for other than 6 epochs, -quick with --quick). With `--resume`, the splits stored
there are kept and not computed again.

    python benchmarks/noisy_eval.py --splits 5 --epochs 6
    python benchmarks/noisy_eval.py --quick      # digits, 2 splits
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import common
from common import recall_at
from influence import labels as label_check
from influence.compare import holm
from influence.sgd import predictions

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
    noisy, flipped_all = common.flip_labels(data, a.noise, split, parts="all")
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
             for m, h in zip(measures, holm(p))}}])],
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
    for (row, name, raw), h in zip(p_values, holm([p for _, _, p in p_values])):
        if np.isfinite(raw):
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
        "flipped to a random other class (the same training flips as in noisy.md). "
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




def main(argv=None) -> dict:
    parser = common.label_noise_parser(__doc__, "0.1,0.2", "remove this fraction of the "
                                       "training set (top-k) and retrain")
    a, data, out = common.label_noise_setup(parser, argv, "noisy-eval")
    return common.by_split(data, out, a, "checks", eval_split, eval_report)


if __name__ == "__main__":
    main()
