"""Retrace variants on the group trust check: does a damped retrace, a horizon of the last E
epochs or Gauss-Newton curvature predict group removal better than the exact retrace?

Per split, the run of benchmarks/groups.py and its 20 random groups of 5 % (random_groups, the
same seed, so the same groups):
* digits with the app's defaults (36 epochs, η = 0.2), with the app's selection part (half the
  validation images, held out of the query). Every variant scores every training image twice:
  on the query (validation images outside the selection part) and on the selection part.
  Variants: the exact retrace (Algorithm 2), a horizon of the last E epochs for every E (E = 1:
  the paper's last-epoch version), damping λ for each λ of --lambdas (u ← (1 − λη_t)(I − η_t
  H[t]) u) and Gauss-Newton curvature. The group check on the selection part (Spearman of
  summed selection scores against the retrained change of the selection loss) chooses λ and E
  per split; the query part, which chose nothing, judges them. Truth: the groups retrained
  without them (Definition 2, all epochs, one vectorised run) minus the same without nothing;
  also averaged over --seeds more training seeds (another batch order and initialisation, the
  same split) for the expected change. Top-k: each variant's k lowest query scores removed and
  retrained, the summed estimate against the change.
* MNIST CNN (6 epochs): the retrained changes of benchmarks/groups.py are read from its
  groups-groups.csv (the whole validation part is the query there); the exact retrace's sums
  are compared with that file's to show the runs are the same. λ and E are chosen per split on
  the other splits (leave one split out). --mnist-topk retrains the top-k of the variants given
  on the first --mnist-topk-splits splits (the exact retrace's top-k comes from groups-topk.csv).
Paired t-tests over splits of each variant against the exact retrace, Holm over the table; and
of the retrained change without each variant's top k against that without the exact retrace's.

    python benchmarks/retrace_variants.py --splits 5 --seeds 2 --resume
    python benchmarks/retrace_variants.py --data mnist --splits 5 --lambdas 0.03,0.1,0.3,1 --resume
    python benchmarks/retrace_variants.py --data mnist --splits 5 --resume \
        --mnist-topk damped-0.1,gn --mnist-topk-splits 2
    python benchmarks/retrace_variants.py --splits 7 --resume          # two more digits splits
    python benchmarks/retrace_variants.py --data digits,mnist --splits 5 --digits-splits 7 \
        --resume --mnist-topk damped-0.03,gn,E4 --mnist-topk-splits 3   # the report
    python benchmarks/retrace_variants.py --quick      # digits, 2 splits, 10 epochs
"""
from __future__ import annotations

import argparse
import functools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

import common
from common import methods
from groups import random_groups
from influence import models
from influence.compare import holm
from influence.counterfactual import outcomes
from influence.horizon import horizons, retrace_by_epoch
from influence.sgd import counterfactual_sgd, initial_params, make_schedule, per_sample_loss
from influence.sgd_influence import loss_gradient, retrace

LAMBDAS = "0.01,0.03,0.1,0.3,1,3"
KS = (10, 100)
EPOCHS = {"digits": None, "mnist": 6}
SELECTION = {"digits": 0.5, "mnist": 0.0}  # digits: the app's selection part
TITLE = {"digits": "digits (app defaults)", "mnist": "MNIST CNN"}
TUNED = ("damped*", "horizon*")  # chosen per split: on the selection part, or leave one out
REGISTERED = f"damped-{methods.DAMPING:g}"  # the λ of the registry's damped ranking
COMPARED = ["damped*", REGISTERED, "horizon*", "gn", "E1", "best*"]


def part_loss(run, name: str):
    """The mean loss over a part of the run as a function of θ; the query: run.query_loss()."""
    if name == "query":
        return run.query_loss()
    obj = run.part(name)
    return lambda theta: per_sample_loss(obj.outputs(theta, obj.x), obj.y).mean()


def variant_scores(run, u, lambdas: list[float]) -> tuple[dict[str, np.ndarray], dict]:
    """Every variant's score per training position for the query vector u: E1 … EK (a horizon
    of the last E epochs; EK = exact), damped-λ, gn; and the seconds of each retrace."""
    K = run.schedule.epochs
    args = (run.objective, run.schedule, run.checkpoints, run.keep_at, u, range(K))
    seconds, t = {}, time.perf_counter()
    contrib, _ = retrace_by_epoch(*args, labels_at=run.labels_at)
    seconds["exact"] = time.perf_counter() - t
    scores = {f"E{e}": s for e, s in horizons(contrib).items()}
    scores["exact"] = scores[f"E{K}"]
    for lam in lambdas:
        t = time.perf_counter()
        scores[f"damped-{lam:g}"] = retrace(*args, labels_at=run.labels_at, damping=lam)
        seconds[f"damped-{lam:g}"] = time.perf_counter() - t
    t = time.perf_counter()
    scores["gn"] = retrace(*args, labels_at=run.labels_at, curvature="gauss-newton")
    seconds["gn"] = time.perf_counter() - t
    return {k: v.cpu().double().numpy() for k, v in scores.items()}, seconds


def seed_changes(run, removals: list[list[str]], seed: int, parts: list[str]) -> pd.DataFrame:
    """The change of each part's loss when each set is removed, in a run trained with another
    seed (batch order and initialisation; the same split and data): counterfactual SGD
    (Definition 2, all epochs) without each set minus without nothing, one vectorised run."""
    schedule = make_schedule(len(run.train_ids), replace(run.config.sgd(), seed=seed))
    theta0 = initial_params(models.build(run.preset.name, run.data.shape,
                                         len(run.data.classes), seed), run.device, run.dtype)
    keep = torch.ones(len(removals) + 1, len(run.train_ids), dtype=torch.bool,
                      device=run.device)
    for m, ids in enumerate(removals):
        keep[m + 1, [run.position[sid] for sid in ids]] = False
    thetas = counterfactual_sgd(run.objective, schedule, theta0, keep)
    losses = {f"{p}_loss": part_loss(run, p) for p in parts}
    with torch.no_grad():
        rows = [{c: float(fn({k: v[m] for k, v in thetas.items()})) for c, fn in losses.items()}
                for m in range(len(keep))]
    frame = pd.DataFrame(rows)
    return (frame - frame.iloc[0]).iloc[1:].reset_index(drop=True)


def spearman(x, y) -> float:
    return float(stats.spearmanr(x, y).statistic)


def group_sums(scores: dict[str, np.ndarray], positions: list[list[int]]) -> dict:
    return {name: np.array([s[p].sum() for p in positions]) for name, s in scores.items()}


def choose(sums: dict, actual: np.ndarray) -> dict[str, str]:
    """The damping and the horizon with the highest group Spearman against `actual`, and the
    best of every variant (ties: the first in order)."""
    rho = {name: spearman(s, actual) for name, s in sums.items()}
    pick = lambda names: max(names, key=lambda n: rho[n])  # noqa: E731
    damped = pick([n for n in rho if n.startswith("damped-")])
    horizon = pick([n for n in rho if n.startswith("E")])
    return {"damped*": damped, "horizon*": horizon,
            "best*": pick(["exact", damped, horizon, "gn"])}


def digits_split(data, split: int, a) -> tuple[list[dict], list[dict], dict]:
    began = time.perf_counter()
    run = common.train_run(data, split, a.epochs or EPOCHS["digits"], "digits",
                           SELECTION["digits"])
    parts = ["query", "selection"]
    scores, seconds = {}, {}
    for p in parts:
        scores[p], seconds[p] = variant_scores(run, loss_gradient(part_loss(run, p), run.theta),
                                               a.lambdas)
    groups = random_groups(run.train_ids, a.groups, 0.05, split)
    positions = [[run.position[sid] for sid in g] for g in groups]
    sums = {p: group_sums(scores[p], positions) for p in parts}
    t = time.perf_counter()
    base = outcomes(run, [[], *groups], "all")
    seconds["retrain_groups"] = time.perf_counter() - t
    actual = {p: (base[f"{p}_loss"] - base[f"{p}_loss"].iloc[0]).to_numpy()[1:] for p in parts}
    actual["val"] = (base.val_loss - base.val_loss.iloc[0]).to_numpy()[1:]
    chosen = choose(sums["selection"], actual["selection"])
    t = time.perf_counter()
    again = [seed_changes(run, groups, 1000 * (s + 1) + split, parts) for s in range(a.seeds)]
    seconds["retrain_seeds"] = time.perf_counter() - t
    rows = []
    for g in range(len(groups)):
        row = {"data": "digits", "split": split, "group": g, "size": len(groups[g]),
               "actual_query": actual["query"][g], "actual_selection": actual["selection"][g],
               "actual_val": actual["val"][g],
               "actual_query_seeds": np.mean([actual["query"][g]] +
                                             [c.query_loss.iloc[g] for c in again]),
               "actual_selection_seeds": np.mean([actual["selection"][g]] +
                                                 [c.selection_loss.iloc[g] for c in again])}
        for p in parts:
            row |= {f"{p}:{name}": s[g] for name, s in sums[p].items()}
        rows.append(row)
    top_variants = ["exact", "E1", "gn", *dict.fromkeys(chosen[v] for v in TUNED)]
    sets = {(v, k): common.most_suspicious(run, scores["query"][v], k)
            for v in top_variants for k in a.ks if k < len(run.train_ids)}
    t = time.perf_counter()
    top = outcomes(run, [[], *sets.values()], "all")
    seconds["retrain_topk"] = time.perf_counter() - t
    change = (top.query_loss - top.query_loss.iloc[0]).to_numpy()[1:]
    topk = [{"data": "digits", "split": split, "variant": v, "k": k,
             "predicted": float(np.sort(scores["query"][v])[:k].sum()), "actual": c}
            for (v, k), c in zip(sets, change)]
    info = {"data": "digits", "split": split, "epochs": run.config.epochs,
            "steps": run.schedule.steps, "lr": run.config.lr, "n_train": len(run.train_ids),
            "n_query": int(len(run.split.val) - len(run.selection)),
            "n_selection": int(len(run.selection)), **chosen,
            **{f"seconds_{p}_{k}": v for p in parts for k, v in seconds[p].items()},
            **{f"seconds_{k}": v for k, v in seconds.items() if not isinstance(v, dict)},
            "total_s": time.perf_counter() - began}
    print(f"digits split {split}: chosen {chosen}; query Spearman exact "
          f"{spearman(sums['query']['exact'], actual['query']):.2f}, "
          + ", ".join(f"{v} {spearman(sums['query'][chosen[v]], actual['query']):.2f}"
                      for v in TUNED)
          + f", gn {spearman(sums['query']['gn'], actual['query']):.2f} "
            f"({info['total_s']:.0f} s)", flush=True)
    return rows, topk, info


def mnist_split(data, split: int, a) -> tuple[list[dict], list[dict], dict]:
    began = time.perf_counter()
    stored = pd.read_csv(Path(a.groups_csv))
    stored = stored[(stored.data == "mnist") & (stored.split == split)].sort_values("group")
    if stored.empty:
        raise SystemExit(f"error: {a.groups_csv} has no MNIST split {split}: run "
                         "benchmarks/groups.py first")
    run = common.train_run(data, split, a.epochs or EPOCHS["mnist"], "mnist",
                           SELECTION["mnist"])
    scores, seconds = variant_scores(run, loss_gradient(part_loss(run, "query"), run.theta),
                                     a.lambdas)
    groups = random_groups(run.train_ids, len(stored), 0.05, split)
    sums = group_sums(scores, [[run.position[sid] for sid in g] for g in groups])
    same = np.abs(sums["exact"] - stored.predicted_sgd.to_numpy()).max() / np.abs(
        stored.predicted_sgd).max()
    rows = [{"data": "mnist", "split": split, "group": g, "size": len(groups[g]),
             "actual_query": stored.actual_all.iloc[g],
             **{f"query:{name}": s[g] for name, s in sums.items()}}
            for g in range(len(groups))]
    topk = []
    stored_top = pd.read_csv(Path(a.groups_csv).with_name(
        Path(a.groups_csv).name.replace("-groups.csv", "-topk.csv")))
    for k in a.ks:
        hit = stored_top[(stored_top.data == "mnist") & (stored_top.split == split)
                         & (stored_top.method == "sgd") & (stored_top.k == k)]
        if len(hit):
            topk.append({"data": "mnist", "split": split, "variant": "exact", "k": k,
                         "predicted": float(np.sort(scores["exact"])[:k].sum()),
                         "actual": float(hit.actual.iloc[0])})
    info = {"data": "mnist", "split": split, "epochs": run.config.epochs,
            "steps": run.schedule.steps, "lr": run.config.lr, "n_train": len(run.train_ids),
            "same_as_groups_csv": float(same),
            **{f"seconds_query_{k}": v for k, v in seconds.items()},
            "total_s": time.perf_counter() - began}
    print(f"mnist split {split}: exact sums vs groups-groups.csv rel. gap {same:.1e}; Spearman "
          + ", ".join(f"{v} {spearman(sums[v], stored.actual_all):.2f}"
                      for v in ["exact", "E1", "gn", *[f"damped-{x:g}" for x in a.lambdas]])
          + f" ({info['total_s']:.0f} s)", flush=True)
    return rows, topk, info


def one_variant(run, u, variant: str) -> np.ndarray:
    """One variant's scores (names as variant_scores gives them)."""
    K = run.schedule.epochs
    options = ({"damping": float(variant.split("-", 1)[1])} if variant.startswith("damped-")
               else {"curvature": "gauss-newton"} if variant == "gn" else {})
    epochs = range(K - int(variant[1:]), K) if variant.startswith("E") else range(K)
    return retrace(run.objective, run.schedule, run.checkpoints, run.keep_at, u, epochs,
                   labels_at=run.labels_at, **options).cpu().double().numpy()


def mnist_topk(data, split: int, variants: list[str], a) -> list[dict]:
    """The MNIST top-k of the given variants retrained (all epochs, one vectorised run): the
    summed estimate against the change of the validation loss."""
    run = common.train_run(data, split, a.epochs or EPOCHS["mnist"], "mnist",
                           SELECTION["mnist"])
    u = loss_gradient(part_loss(run, "query"), run.theta)
    scores = {v: one_variant(run, u, v) for v in variants}
    sets = {(v, k): common.most_suspicious(run, scores[v], k) for v in variants for k in a.ks}
    top = outcomes(run, [[], *sets.values()], "all")
    change = (top.query_loss - top.query_loss.iloc[0]).to_numpy()[1:]
    print(f"mnist split {split}: top-k of {', '.join(variants)} retrained", flush=True)
    return [{"data": "mnist", "split": split, "variant": v, "k": k,
             "predicted": float(np.sort(scores[v])[:k].sum()), "actual": c}
            for (v, k), c in zip(sets, change)]


# --- the report ---------------------------------------------------------------------------
def leave_one_out(rho: pd.DataFrame) -> pd.DataFrame:
    """For MNIST: per split, the damping and horizon with the best mean Spearman on the other
    splits (and the best of all variants), as digits chooses them on its selection part."""
    rows = []
    for split in rho.index:
        others = rho.drop(index=split).mean()
        pick = lambda names: max(names, key=lambda n: others[n])  # noqa: E731
        damped = pick([n for n in rho.columns if n.startswith("damped-")])
        horizon = pick([n for n in rho.columns if n.startswith("E")])
        rows.append({"split": split, "damped*": damped, "horizon*": horizon,
                     "best*": pick(["exact", damped, horizon, "gn"])})
    return pd.DataFrame(rows).set_index("split")


def per_split(groups: pd.DataFrame, info: pd.DataFrame, name: str, part: str,
              truth: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group Spearman of every variant per split (rows) against `truth`, with the tuned
    variants (damped*, horizon*, best*) filled in from each split's choice; the choices."""
    g = groups[groups.data == name].dropna(axis=1, how="all")
    cols = [c.split(":", 1)[1] for c in g.columns if c.startswith(f"{part}:")]
    rho = pd.DataFrame({c: g.groupby("split").apply(
        lambda s, c=c: spearman(s[f"{part}:{c}"], s[truth]), include_groups=False)
        for c in cols})
    chosen = (info[info.data == name].set_index("split")[list(TUNED) + ["best*"]]
              if name == "digits" else leave_one_out(rho))
    for v in chosen.columns:
        rho[v] = [rho.loc[s, chosen.loc[s, v]] for s in rho.index]
    return rho, chosen


def label(v: str, chosen: pd.DataFrame | None = None) -> str:
    if v == REGISTERED:
        return f"damped, λ = {methods.DAMPING:g} (the app's damped ranking)"
    names = {"exact": "exact (Algorithm 2)", "E1": "last epoch (E = 1)", "gn": "Gauss-Newton",
             "damped*": "damped, λ chosen", "horizon*": "last E epochs, E chosen",
             "best*": "best of the four, chosen"}
    if v in names:
        text = names[v]
        if chosen is not None and v in chosen:
            text += f" ({', '.join(f'{x}×{n}' for x, n in chosen[v].value_counts().items())})"
        return text
    return (f"damped, λ = {v.split('-', 1)[1]}" if v.startswith("damped-")
            else f"last {v[1:]} epochs")


def spearman_tables(groups, info, name: str) -> tuple[list[str], dict]:
    """Markdown sections of one data set: the grid, then the tuned variants against exact."""
    truths = ({"query": ("actual_query", "retrained once"),
               "seeds": ("actual_query_seeds", "mean over seeds")}
              if name == "digits" else {"query": ("actual_query", "retrained once")})
    sections, figures = [], {}
    grid_rows, test_rows = [], []
    for key, (truth, truth_name) in truths.items():
        rho, chosen = per_split(groups, info, name, "query", truth)
        if name == "digits" and key == "query":
            sel, _ = per_split(groups, info, name, "selection", "actual_selection")
        K = max(int(c[1:]) for c in rho.columns if c.startswith("E") and c[1:].isdigit())
        shown = ["exact", *[c for c in rho.columns if c.startswith("damped-")], "gn",
                 *[f"E{e}" for e in sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, K}) if e <= K]]
        if key == "query":
            for v in dict.fromkeys(shown):
                grid_rows.append({"variant": label(v), "splits": len(rho),
                                  **({"selection part (chooses)": common.mean_std(sel[v])}
                                     if name == "digits" else {}),
                                  "query part": common.mean_std(rho[v])})
        for v in ["exact", *[c for c in COMPARED if c in rho]]:
            row = {"truth": truth_name, "variant": label(v, chosen), "splits": len(rho),
                   "group Spearman": common.mean_std(rho[v]),
                   "≥ 0.7": f"{int((rho[v] >= 0.7).sum())}/{len(rho)}"}
            if v != "exact":
                diff = rho[v] - rho["exact"]
                row |= {"difference to exact": common.mean_std(diff),
                        "p (paired t)": float(stats.ttest_rel(rho[v], rho["exact"]).pvalue)
                        if len(rho) > 1 and diff.abs().sum() > 0 else np.nan}
            test_rows.append(row)
            figures[f"{name}_{key}_{v}"] = float(rho[v].mean())
    tests = pd.DataFrame(test_rows)
    tests["p (Holm)"] = holm(tests["p (paired t)"])
    grid_note = ("Every variant per split; *selection part*: summed scores on the selection "
                 "loss against the retrained change of the selection loss (what chooses λ and "
                 "E); *query part*: the same on the query, which chooses nothing."
                 if name == "digits" else
                 "Every variant per split, against the retrained change of the validation loss "
                 "read from groups-groups.csv.")
    choose_note = ("chosen per split on the selection part (how often each was chosen in "
                   "brackets)" if name == "digits" else
                   "chosen per split by the best mean Spearman on the other splits (leave one "
                   "split out; how often each was chosen in brackets)")
    sections += [f"### {TITLE[name]}: every variant\n\n{grid_note} Group Spearman, mean ± "
                 "std over splits.", common.markdown(pd.DataFrame(grid_rows)),
                 f"### {TITLE[name]}: each variant against the exact retrace\n\nλ, E and the "
                 f"best of exact/damped/horizon/Gauss-Newton are {choose_note}. Paired t-test "
                 "of the per-split Spearman against the exact retrace's; Holm over the "
                 f"{int(tests['p (paired t)'].notna().sum())} tests of this table.",
                 common.markdown(tests)]
    return sections, figures


def tuned_topk(topk: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """The digits top-k rows of the variants chosen on each split's selection part, under the
    names damped*, horizon*, best* (the fixed variants keep theirs; MNIST's as they are)."""
    digits = topk[topk.data == "digits"]
    chosen = info[info.data == "digits"].set_index("split")
    rows = [digits[digits.variant.isin(["exact", "E1", "gn"])]]
    for v in [*TUNED, "best*"]:
        for split, name in chosen[v].items() if len(chosen) else []:
            rows.append(digits[(digits.split == split) & (digits.variant == name)]
                        .assign(variant=v))
    return pd.concat([*rows, topk[topk.data != "digits"]], ignore_index=True)


def topk_table(topk: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    rows = []
    topk = tuned_topk(topk, info)
    topk = topk.assign(ratio=topk.predicted / topk.actual)
    for (name, v, k), part in topk.groupby(["data", "variant", "k"], sort=False):
        ratio = part.ratio.median()
        rows.append({"data": TITLE[name], "variant": label(v), "k": k, "splits": len(part),
                     "predicted (mean)": f"{part.predicted.mean():+.3g}",
                     "actual (mean ± std)": f"{part.actual.mean():+.2e} ± "
                                            f"{part.actual.std(ddof=0):.1e}",
                     "median ratio": f"{ratio:.3g}",
                     "within 2×": common.met(0.5 <= ratio <= 2),
                     "sign right": f"{int((np.sign(part.predicted) == np.sign(part.actual)).sum())}"
                                   f"/{len(part)}"})
    return pd.DataFrame(rows)


def removal_table(topk: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Does removing a variant's top k lower the query loss more than removing the exact
    retrace's top k? Per data set, variant and k: the retrained change of the query loss without
    the variant's k minus that without the exact retrace's k on the same split (negative: the
    variant's top k hold more harm), paired t-test over the splits both have; Holm over each
    data set's tests."""
    topk = tuned_topk(topk, info)
    rows = []
    for (name, v, k), part in topk[topk.variant != "exact"].groupby(["data", "variant", "k"],
                                                                    sort=False):
        exact = topk[(topk.data == name) & (topk.variant == "exact") & (topk.k == k)]
        pair = part.set_index("split").actual.to_frame("variant").join(
            exact.set_index("split").actual.rename("exact"), how="inner")
        diff = pair.variant - pair.exact
        rows.append({"data": TITLE[name], "variant": label(v), "k": k, "splits": len(pair),
                     "actual, variant's top k": common.mean_std(pair.variant, "+.2e", ".1e"),
                     "actual, exact's top k": common.mean_std(pair.exact, "+.2e", ".1e"),
                     "difference": common.mean_std(diff, "+.2e", ".1e"),
                     "lower in": f"{int((diff < 0).sum())}/{len(pair)}",
                     "p (paired t)": float(stats.ttest_rel(pair.variant, pair.exact).pvalue)
                     if len(pair) > 1 and diff.abs().sum() > 0 else np.nan})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["p (Holm)"] = frame.groupby("data", sort=False)["p (paired t)"].transform(
            lambda p: pd.Series(holm(p), index=p.index))
    return frame


def report(groups, topk, info, a, out: Path) -> dict:
    sections, figures = [], {}
    setup = []
    for name, part in info.groupby("data", sort=False):
        t = part.iloc[0]
        text = (f"- {TITLE[name]}: {int(t.n_train)} training images, {int(t.epochs)} epochs "
                f"({int(t.steps)} steps), η = {t.lr:g}, {len(part)} splits, "
                f"{int(groups[groups.data == name].groupby('split').size().iloc[0])} groups of "
                f"{int(groups[groups.data == name]['size'].iloc[0])} per split")
        if name == "digits":
            text += (f"; query {int(t.n_query)} and selection part {int(t.n_selection)} "
                     f"validation images; the truth also averaged over {a.seeds} more training "
                     f"seeds; {part.total_s.mean():.0f} s per split")
        else:
            text += (f"; the exact retrace's group sums equal groups-groups.csv's to a relative "
                     f"{part.same_as_groups_csv.max():.1e} (largest over splits); "
                     f"{part.total_s.mean():.0f} s per split")
        setup.append(text + ".")
    sections.append("Setup:\n\n" + "\n".join(setup))
    for name in dict.fromkeys(info.data):
        more, fig = spearman_tables(groups, info, name)
        sections += more
        figures |= fig
    tops = topk_table(topk, info)
    sections += ["### Top-k removals\n\nEach variant's k lowest query scores removed and "
                 "retrained (all epochs): the summed estimate over the actual change of the "
                 "query loss, median over splits; within 2×: a median ratio from 0.5 to 2.",
                 common.markdown(tops),
                 "### Top-k removals against the exact retrace's\n\nThe retrained change of "
                 "the query loss without each variant's top k minus that without the exact "
                 "retrace's top k on the same split (negative: the variant's top k hold more "
                 "harm; *lower in*: splits where it is negative), paired t-test over the splits "
                 "both were retrained on; Holm over each data set's tests.",
                 common.markdown(removal_table(topk, info))]
    sections.append(f"Per data set <name>: per group, `{a.name_out}-<name>-groups.csv` (summed "
                    "scores of every variant on each part, retrained changes); per top-k set, "
                    f"`{a.name_out}-<name>-topk.csv`; per split (choices, seconds), "
                    f"`{a.name_out}-<name>-splits.csv`.")
    common.write_report(out, a.name_out, "Retrace variants on the group trust check",
                        common.command(), sections)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="digits, mnist or digits,mnist")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--digits-splits", type=int, default=None,
                        help="splits of the digits, if other than --splits")
    parser.add_argument("--groups", type=int, default=20, help="random groups per split")
    parser.add_argument("--seeds", type=int, default=2,
                        help="more training seeds the digits truth is averaged over")
    parser.add_argument("--lambdas", default=LAMBDAS, help="damping values tried")
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--groups-csv", default=str(common.RESULTS / "groups-groups.csv"),
                        help="the retrained MNIST changes of benchmarks/groups.py")
    parser.add_argument("--mnist-topk", default="",
                        help="variants whose MNIST top-k are retrained, e.g. damped-0.1,gn")
    parser.add_argument("--mnist-topk-splits", type=int, default=0,
                        help="on how many MNIST splits --mnist-topk is retrained")
    common.add_resume_option(parser)
    common.add_data_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.data, a.groups, a.seeds = min(a.splits, 2), "digits", 8, 1
        a.digits_splits = None
        a.epochs, a.lambdas = a.epochs or 10, "0.1,1"
    a.lambdas = [float(x) for x in a.lambdas.split(",")]
    a.ks = [int(k) for k in a.ks.split(",")]
    common.setup(a.threads)
    names = a.data.split(",")
    splits = {name: a.digits_splits if name == "digits" and a.digits_splits else a.splits
              for name in names}
    a.name_out = "retrace-variants-quick" if a.quick else "retrace-variants"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [[], [], []]
    for name in names:  # one set of CSVs per data set: each can run in its own process
        files = [out / f"{a.name_out}-{name}-{part}.csv" for part in ("groups", "topk", "splits")]
        data = functools.cache(lambda name=name: common.image_data(name == "digits", a.data_dir))
        one = digits_split if name == "digits" else mnist_split
        tables = common.kept_tables(files, a.resume,
                                    [(split,) for split in range(splits[name])],
                                    lambda split, one=one, data=data: one(data(), split, a),
                                    key=("split",))
        if name == "mnist":  # the retrained top-k of more variants, in a file of its own
            extra = out / f"{a.name_out}-mnist-retrained-topk.csv"
            rows = pd.read_csv(extra).to_dict("records") if extra.exists() else []
            for split in range(min(a.mnist_topk_splits, splits[name])):
                wanted = [v for v in a.mnist_topk.split(",") if v and not any(
                    r["split"] == split and r["variant"] == v for r in rows)]
                if wanted:
                    rows += mnist_topk(data(), split, wanted, a)
                    pd.DataFrame(rows).to_csv(extra, index=False)
            tables[1] = pd.concat([tables[1], pd.DataFrame(rows)], ignore_index=True)
        parts = [old + [table[table.split < splits[name]]] for old, table in zip(parts, tables)]
    frames = [pd.concat(tables, ignore_index=True) for tables in parts]
    figures = report(*frames, a, out)
    common.summary(**figures)
    return figures


if __name__ == "__main__":
    main()
