"""Why the exact retrace misses on the digits' long runs: the estimate is the exact slope of the
retrained loss, but the retrained loss is far from linear in the removal.

SGD-influence (Algorithm 2) is linear: it estimates d/dε of the query loss when a group's weight
in every step it is used goes from 1 to 1 − ε, at ε = 0, and predicts full removal (ε = 1) as
that slope. Per split, the run of benchmarks/groups.py (digits with the app's defaults: 36
epochs, η = 0.2, half the validation images held out of the query; or, with --data mnist, the
MNIST CNN, 6 epochs) and its 20 random groups of 5 % (groups.random_groups, the same seed):
* slope check: every group retrained at weight 1 − ε (counterfactual SGD, Definition 2 with a
  weight instead of 0: batch_weights takes any keep value) for ε in --eps; the retrained change
  over ε against the summed estimate (Spearman, median ratio). Where they agree, the retrace is
  the derivative of this very run; where they do not, the change is no longer linear in ε.
* size: the typical change at each ε against that of full removal (ratio of medians of
  |change|). A change that stays large however small ε is comes from the kinks of the network
  (a ReLU or a max-pool switching somewhere along the steps): the loss jumps where a switch flips, and
  a removal of any size flips some.
* reproducibility of the truth: --worlds more "worlds", each the same run with every image's
  weight jittered by a relative 1e-4 (together a random displacement of a few thousandths of
  one image, against 54 images removed per group on the digits; nothing else changes: same batches, same
  initialisation); in each world every group fully removed, its change measured against that
  world's own reference. The group Spearman between two worlds says how far one retraining
  reproduces itself (is the truth noise?); the estimate against each world and against their
  mean says what the retrace predicts.

    python benchmarks/linearity.py --splits 5 --resume                   # float64
    python benchmarks/linearity.py --splits 5 --dtype float32 --resume   # the app's precision
    python benchmarks/linearity.py --data mnist --splits 5 --dtype float32 --eps 1e-3,0.1 \
        --worlds 1 --resume              # the MNIST CNN, 6 epochs (whole validation part)
    python benchmarks/linearity.py --data mnist --splits 1 --dtype float64 --eps 1e-7 \
        --worlds 0 --resume              # its slope check
    python benchmarks/linearity.py --quick                               # 1 split, 10 epochs
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common
from groups import random_groups
from retrace_variants import spearman
from influence.config import workers
from influence.costs import vmap_chunk
from influence.sgd import counterfactual_sgd

EPS = "1e-7,1e-5,1e-3,0.1,1"
EPOCHS = {"digits": None, "mnist": 6}  # as benchmarks/groups.py: the app's default, the paper's
SELECTION = {"digits": 0.5, "mnist": 0.0}  # the app's selection part; MNIST: groups.py's query
TITLE = {"digits": "digits (app defaults)", "mnist": "MNIST CNN"}
JITTER = 1e-4  # relative jitter of every image's weight in a world: all together, a
# random displacement of about 0.003 images' worth (√N · 1e-4), against 54 removed per group


def retrained_losses(run, keeps: torch.Tensor) -> np.ndarray:
    """The query loss after counterfactual SGD (all epochs) with each row of `keeps` as the
    images' weights (1: kept, 0: removed, in between: down-weighted), one vectorised run."""
    thetas = counterfactual_sgd(run.objective, run.schedule, run.checkpoints[0], keeps,
                                chunk_size=vmap_chunk(run), workers=workers(run.device))
    query = run.query_loss()
    with torch.no_grad():
        return np.array([float(query({k: v[m] for k, v in thetas.items()}))
                         for m in range(len(keeps))])


def one_split(data, split: int, a) -> tuple[list[dict], list[dict]]:
    began = time.perf_counter()
    run = common.train_run(data, split, a.epochs or EPOCHS[a.data], a.data, SELECTION[a.data],
                           a.dtype)
    estimate = run.influence(run.query_loss())
    groups = random_groups(run.train_ids, a.groups, 0.05, split)
    members = [[run.position[sid] for sid in g] for g in groups]
    predicted = np.array([estimate[m].sum() for m in members])
    n, dtype = len(run.train_ids), run.dtype
    rng = np.random.default_rng(split)
    worlds = [torch.ones(n, dtype=dtype)] + [
        1 + JITTER * torch.as_tensor(rng.standard_normal(n), dtype=dtype)
        for _ in range(a.worlds)]
    keeps = []
    for eps in a.eps:  # the unjittered world, each group at weight 1 − ε
        for m in members:
            keep = worlds[0].clone()
            keep[m] = 1 - eps
            keeps.append(keep)
    for world in worlds[1:]:  # each other world: its reference, then each group removed
        keeps.append(world)
        for m in members:
            keep = world.clone()
            keep[m] = 0
            keeps.append(keep)
    losses = retrained_losses(run, torch.stack([worlds[0], *keeps]))
    reference, losses = losses[0], losses[1:]
    g = len(groups)
    by_eps = {eps: losses[i * g:(i + 1) * g] - reference for i, eps in enumerate(a.eps)}
    rest = losses[len(a.eps) * g:].reshape(a.worlds, g + 1)
    full = [by_eps[1.0]] + [row[1:] - row[0] for row in rest]  # world 0 is the unjittered one
    rows = [{"split": split, "group": k, "predicted": predicted[k],
             **{f"change_eps_{eps:g}": by_eps[eps][k] for eps in a.eps},
             **{f"change_world_{w}": full[w][k] for w in range(len(full))}}
            for k in range(g)]
    info = {"split": split, "data": a.data, "epochs": run.config.epochs,
            "steps": run.schedule.steps, "lr": run.config.lr, "n_train": n, "dtype": a.dtype,
            "reference_shift": float(np.median(np.abs(rest[:, 0] - reference)))
            if a.worlds else np.nan,
            "seconds": time.perf_counter() - began}
    print(f"split {split}: slope at ε = {min(a.eps):g} "
          f"{spearman(predicted, by_eps[min(a.eps)]):.3f}, full removal "
          f"{spearman(predicted, by_eps[1.0]):.3f} ({info['seconds']:.0f} s)", flush=True)
    return rows, [info]


def per_split(groups: pd.DataFrame, eps: list[float], worlds: int) -> pd.DataFrame:
    rows = []
    for split, part in groups.groupby("split"):
        full = part[[f"change_world_{w}" for w in range(worlds + 1)]].to_numpy()
        row = {"split": split}
        for e in eps:
            change = part[f"change_eps_{e:g}"].to_numpy()
            row[f"slope_rho_{e:g}"] = spearman(part.predicted, change / e)
            row[f"slope_ratio_{e:g}"] = float(np.median(part.predicted * e / change))
            row[f"size_{e:g}"] = float(np.median(np.abs(change)) /
                                       np.median(np.abs(part["change_eps_1"])))
        row["world_rho"] = float(np.mean([spearman(full[:, i], full[:, j]) for i, j in
                                          itertools.combinations(range(worlds + 1), 2)])
                                 ) if worlds else np.nan
        row["estimate_rho_one"] = float(np.mean([spearman(part.predicted, full[:, w])
                                                 for w in range(worlds + 1)]))
        row["estimate_rho_mean"] = spearman(part.predicted, full.mean(1))
        rows.append(row)
    return pd.DataFrame(rows)


def worlds_section(splits: pd.DataFrame, info: pd.DataFrame, a) -> list[str]:
    """The truth's reproducibility over the jittered worlds (none without them)."""
    if not a.worlds:
        return []
    m = lambda col: common.mean_std(splits[col])  # noqa: E731
    truth = pd.DataFrame([
        {"comparison": "one world against another (the truth's own reproducibility)",
         "group Spearman": m("world_rho")},
        {"comparison": "estimate against one world", "group Spearman": m("estimate_rho_one")},
        {"comparison": f"estimate against the mean of the {a.worlds + 1} worlds",
         "group Spearman": m("estimate_rho_mean")}])
    return [f"### How far one retraining reproduces itself\n\n{a.worlds} more "
            f"world{'s' if a.worlds > 1 else ''}: the same run with every image's weight "
            f"jittered by a relative {JITTER:g} (same batches, same initialisation), each group "
            "fully removed and measured against the world's own reference (whose query loss "
            f"moves by a median {info.reference_shift.median():.2g} from the jitter alone).",
            common.markdown(truth)]


def report(groups: pd.DataFrame, info: pd.DataFrame, a, out: Path) -> dict:
    splits = per_split(groups, a.eps, a.worlds)
    t = info.iloc[0]
    query = "the app's query part" if SELECTION[t["data"]] else "every validation image"
    m = lambda col: common.mean_std(splits[col])  # noqa: E731
    slope = pd.DataFrame([{
        "ε": f"{e:g}", "Spearman(estimate, change / ε)": m(f"slope_rho_{e:g}"),
        "median estimate / (change / ε)": common.mean_std(splits[f"slope_ratio_{e:g}"], ".3g",
                                                          ".2g"),
        "median |change| / full removal's": common.mean_std(splits[f"size_{e:g}"], ".3g",
                                                                  ".2g")} for e in a.eps])
    smallest = min(a.eps)
    figures = {"slope_rho": float(splits[f"slope_rho_{smallest:g}"].mean()),
               "slope_ratio": float(splits[f"slope_ratio_{smallest:g}"].median()),
               "world_rho": float(splits.world_rho.mean()),
               "estimate_rho_one": float(splits.estimate_rho_one.mean()),
               "estimate_rho_mean": float(splits.estimate_rho_mean.mean())}
    sections = [
        f"Setup: {TITLE[t['data']]}, {int(t.n_train)} training images, {int(t.epochs)} epochs "
        f"({int(t.steps)} steps), η = {t.lr:g}, {t['dtype']}, {len(splits)} split{'s' * (len(splits) > 1)}, "
        f"{int(groups.groupby('split').size().iloc[0])} random groups of 5 % per split, the "
        f"query loss ({query}); {info.seconds.mean():.0f} s per split. Mean ± "
        "std over splits.",
        "### The estimate is the slope\n\nEach group retrained at weight 1 − ε in every step "
        "it is used (all other images at 1). A median ratio of 1 and a Spearman of 1: the "
        "retrace is the exact derivative of this run. The last column: how large the change "
        "is against full removal's: a change that does not shrink with ε is not the slope's but "
        "the jumps of the network's kinks (ReLU and max-pool switches) that any removal flips.",
        common.markdown(slope), *worlds_section(splits, info, a),
        f"Per group: `{a.name_out}-groups.csv` (estimate, change at each ε, change in each "
        f"world); per split: `{a.name_out}-splits.csv`."]
    common.write_report(out, a.name_out, "The estimate is the exact slope; the retrained "
                        "change is not linear", common.command(), sections)
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the app's")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--eps", default=EPS, help="down-weights ε tried (1 is always added)")
    parser.add_argument("--worlds", type=int, default=3, help="jittered worlds besides the run")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    common.add_resume_option(parser)
    common.add_data_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    try:
        a.eps = sorted({float(e) for e in a.eps.split(",")} | {1.0})
    except ValueError:
        parser.error(f"--eps takes numbers separated by commas, not {a.eps!r}")
    if not all(0 < e <= 1 for e in a.eps):
        parser.error("every ε of --eps must be above 0 and at most 1")
    if a.quick:
        a.splits, a.epochs, a.groups, a.worlds = 1, a.epochs or 10, 8, 2
    common.setup(a.threads)
    if a.quick:
        a.data = "digits"
    a.name_out = "linearity-quick" if a.quick else \
        f"linearity-{a.dtype}" if a.data == "digits" else f"linearity-{a.data}-{a.dtype}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{a.name_out}-groups.csv", out / f"{a.name_out}-splits.csv"]
    data = common.image_data(a.data == "digits", a.data_dir)
    groups, info = common.kept_tables(files, a.resume, [(s,) for s in range(a.splits)],
                                      lambda s: one_split(data, s, a), key=("split",))
    result = report(groups, info, a, out)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
