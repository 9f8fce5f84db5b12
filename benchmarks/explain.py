"""Why this mistake? Does removing the top-m training images for one misclassified test image, and
retraining, fix that image's prediction?

The paper's MNIST CNN on the real MNIST test set (10,000 images, split 60/20/20 into train /
validation / test), plain SGD for --epochs epochs. For each of the first --images misclassified
test images q (in test order), each method picks m training images for q alone:
    SGD-influence (exact and last epoch), Koh & Liang, TracIn: the m whose removal is estimated
        to lower q's loss most (the query is q's own loss; influence.explain);
    similar: the m training images nearest to q (cosine of the CNN's penultimate features);
    random: m seeded random training images.
The test images go through in chunks of --chunk (scored together, then retrained; the CSV keeps
every finished chunk, and --resume carries on from it). The model is retrained without them (counterfactual SGD, --mode; last = the last epoch re-run,
the paper's main protocol), all of q's removal sets in one vectorised run (counterfactual.outcomes), and q
counts as fixed when its prediction becomes its label. Fix rates are compared across the same
test images with McNemar's exact test (only the images that one method fixes and the other not
count), Holm-corrected over every comparison of the report.

    python benchmarks/explain.py --images 50 --epochs 3 --subset 4000 --methods sgd-last,kl,…
    python benchmarks/explain.py --quick      # digits, a few images
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common
from influence import baselines, compare, explain, methods
from influence.counterfactual import outcomes
from influence.sgd import predictions

ESTIMATES = tuple(k for k, r in methods.REGISTRY.items()  # rank by estimated change of q's
                  if r.explains is not None)                # loss (influence.explain)
NAMES = {**{k: methods.get(k).name for k in ESTIMATES},
         "similar": "most similar (features)", "random": "random"}


def mistakes(run, n: int) -> list[str]:
    """The first n misclassified test images, in test order."""
    wrong = np.flatnonzero(~run.correct("test"))[:n]
    return [run.data.ids[run.split.test[i]] for i in wrong]


def similar(run, test_ids: list[str]) -> np.ndarray:
    """Q × N: minus the cosine similarity of each test image's penultimate features to each
    training image's (most similar first when sorted ascending)."""
    test = run.part("test")
    x = test.x[run.test_positions(test_ids)]
    a, b = baselines.features(run, x), baselines.features(run)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return -(a @ b.T)


def picks(run, key: str, test_ids: list[str], m: int, seed: int, kl: dict
          ) -> tuple[np.ndarray, float]:
    """Q × m training positions each method would remove for each test image, and the seconds
    its scores took."""
    began = time.perf_counter()
    if key in ESTIMATES:
        scores = explain.test_scores(run, key, test_ids, **(kl if key == "kl" else {}))
    elif key == "similar":
        scores = similar(run, test_ids)
    else:
        rng = np.random.default_rng(seed)
        scores = rng.standard_normal((len(test_ids), len(run.train_ids)))
    seconds = time.perf_counter() - began
    return np.argsort(scores, axis=1, kind="stable")[:, :m], seconds


def retrain_for(run, test_id: str, chosen: dict[str, np.ndarray], ms: list[int],
                mode: str) -> list[dict]:
    """Retrain without each method's top-m for one test image (all sets in one vectorised run)
    and record its new prediction and loss."""
    q = int(run.test_positions([test_id])[0])
    test = run.part("test")
    x, label = test.x[q:q + 1], int(test.y[q])
    sets = [(key, m) for key in chosen for m in ms]
    removals = [[]] + [[run.train_ids[j] for j in chosen[key][:m]] for key, m in sets]

    def predicted(theta) -> dict:
        with torch.no_grad():
            return {"predicted": int(predictions(test.outputs(theta, x))[0])}

    rows = outcomes(run, removals, mode, query=run.test_loss_fn(test_id), measure=predicted)
    before = rows.iloc[0]
    return [{"test_id": test_id, "label": label, "predicted_before": int(before.predicted),
             "method": key, "m": m, "predicted": int(row.predicted),
             "fixed": int(row.predicted) == label,
             "loss_change": row.query_loss - before.query_loss,
             "test_error_change": row.test_error - before.test_error}
            for (key, m), row in zip(sets, rows.iloc[1:].itertuples())]


def comparisons(frame: pd.DataFrame, leads: list[str]) -> pd.DataFrame:
    """Each SGD-influence variant against every other method at every m: McNemar's exact test
    on the paired fixes over the same test images, Holm-corrected over the whole table."""
    rows = []
    for m, part in frame.groupby("m"):
        wide = part.pivot(index="test_id", columns="method", values="fixed")
        for lead in leads:
            for other in [c for c in wide.columns if c not in leads]:
                test = compare.mcnemar(wide[other].to_numpy(bool), wide[lead].to_numpy(bool))
                rows.append({"m": m, "method": NAMES[lead], "vs": NAMES[other],
                             "fix rate": f"{wide[lead].mean():.0%} vs {wide[other].mean():.0%}",
                             "only method fixed": test["fixed"], "only vs fixed": test["broken"],
                             "p (McNemar exact)": test["p"]})
    table = pd.DataFrame(rows)
    if len(table):
        table["p (Holm)"] = compare.holm(table["p (McNemar exact)"])
    return table


def report(frame: pd.DataFrame, seconds: dict, a, out: Path, base_error: float) -> dict:
    frame = frame.assign(name=frame.method.map(NAMES))
    n = frame.test_id.nunique()
    rates = frame.pivot_table(index="name", columns="m", values="fixed", aggfunc="mean",
                              sort=False)
    counts = frame.pivot_table(index="name", columns="m", values="fixed", aggfunc="sum",
                               sort=False)
    fix = pd.DataFrame({f"m = {m}": [f"{int(counts.loc[k, m])}/{n} ({rates.loc[k, m]:.0%})"
                                     for k in rates.index] for m in rates.columns},
                       index=rates.index).reset_index().rename(columns={"name": "method"})
    change = (frame.groupby(["name", "m"], sort=False)[["loss_change", "test_error_change"]]
              .mean().reset_index().rename(columns={
                  "name": "method", "loss_change": "mean change of q's loss",
                  "test_error_change": "mean change of test error"}))
    leads = [k for k in methods.keys(phase="score") if k in a.methods]  # SGD-influence
    table = comparisons(frame, leads)
    significant = int((table["p (Holm)"] < 0.05).sum()) if len(table) else 0
    timing = pd.DataFrame({"method": [NAMES[k] for k in seconds],
                           f"seconds for {n} test images": [round(s, 1) for s in
                                                            seconds.values()]})
    common.write_report(out, a.name_out, "Why this mistake? Removing the top-m training images "
                        "for one misclassified test image", common.command(), [
        f"Data: {a.data_note}; CNN `{a.model_note}`; plain SGD, batch 64, η = {a.lr}, "
        f"{a.epochs} epochs; test error {base_error:.2%}. The first {n} misclassified test "
        f"images (in test order). Retraining: counterfactual SGD, mode {a.mode}"
        + (" (the last epoch re-run without the removed images)" if a.mode == "last" else "")
        + f", every removal set of one test image in one vectorised run. K&L: Hessian "
        f"estimated on {a.kl_samples} random training instances, {a.kl_iters} MINRES steps, "
        "damping 0.01.",
        "Test images whose prediction became their label after removing each method's top-m "
        "for that image:\n\n" + common.markdown(fix),
        "Mean change of that test image's loss, and of the whole test error (fraction), "
        "against no removal:\n\n" + common.markdown(change),
        "Paired comparison over the same test images (McNemar's exact test on the images that "
        "only one of the two fixed):\n\n" + common.markdown(table) + "\n\n"
        + f"p (Holm): corrected over the {len(table)} tests of this table; {significant} of "
          "them below 0.05.",
        "Scoring time (one core, on a shared machine under heavy load):\n\n" + common.markdown(timing),
        f"Per test image and method: `{a.name_out}.csv`."])
    result = {"images": n}
    for key in a.methods:
        for m in a.ms:
            result[f"{key.replace('-', '_')}_m{m}"] = float(rates.loc[NAMES[key], m])
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50, help="misclassified test images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=None,
                        help="use a seeded random subset of this many images (a smaller, "
                             "quicker problem)")
    parser.add_argument("--ms", default="5,10,20", help="training images removed per test image")
    parser.add_argument("--mode", choices=["last", "all"], default="last")
    parser.add_argument("--methods", default=",".join(NAMES))
    parser.add_argument("--chunk", type=int, default=10, help="test images scored together")
    parser.add_argument("--kl-samples", type=int, default=500,
                        help="K&L: training instances its Hessian is estimated on")
    parser.add_argument("--kl-iters", type=int, default=20, help="K&L: MINRES steps")
    parser.add_argument("--seed", type=int, default=0, help="split, subset and random picks")
    parser.add_argument("--resume", action="store_true",
                        help="keep the test images already in the CSV and do only the others")
    common.add_data_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.images, a.epochs, a.ms = min(a.images, 6), 4, "5,10"
    common.setup(a.threads)
    a.ms, a.methods = [int(m) for m in a.ms.split(",")], a.methods.split(",")
    data, out = common.prepare_experiment(a, "explain")
    name = common.data_name(data, a.quick, a.data_dir)
    if a.subset and a.subset < len(data):
        pick = np.sort(np.random.default_rng(a.seed).choice(len(data), a.subset, replace=False))
        data = data.subset(pick)
    run = common.train_run(data, a.seed, a.epochs, a.name)
    a.data_note = (name + (f", of which a seeded random {a.subset:,} images" if a.subset else "")
                   + f", {len(run.split.train)}/{len(run.split.val)}/{len(run.split.test)} "
                     "train/validation/test")
    base_error = common.test_error(run)
    test_ids = mistakes(run, a.images)
    print(f"test error {base_error:.2%}; explaining {len(test_ids)} mistakes", flush=True)
    csv = out / f"{a.name_out}.csv"
    stored = pd.read_csv(csv, dtype={"test_id": str}) if a.resume and csv.exists() else None
    rows = stored.to_dict("records") if stored is not None else []
    seconds = ({k: float(v) for k, v in stored.drop_duplicates(["test_id", "method"])
                .groupby("method", sort=False).score_seconds.sum().items()}
               if stored is not None else {})  # score_seconds: per test image and method
    done = {r["test_id"] for r in rows}
    todo = [sid for sid in test_ids if sid not in done]
    for start in range(0, len(todo), a.chunk):
        part, began = todo[start:start + a.chunk], time.perf_counter()
        chosen, spent = {}, {}
        for key in a.methods:
            chosen[key], spent[key] = picks(
                run, key, part, max(a.ms), a.seed + test_ids.index(part[0]),
                {"hessian_samples": a.kl_samples, "cg_iters": a.kl_iters})
            seconds[key] = seconds.get(key, 0.0) + spent[key]
        for q, test_id in enumerate(part):
            rows += [dict(r, score_seconds=spent[r["method"]] / len(part)) for r in retrain_for(
                run, test_id, {k: c[q] for k, c in chosen.items()}, a.ms, a.mode)]
        pd.DataFrame(rows).to_csv(csv, index=False)  # partial results survive an interruption
        print(f"{len(done) + start + len(part)}/{len(test_ids)} test images "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    result = report(pd.DataFrame(rows), seconds, a, out, base_error)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
