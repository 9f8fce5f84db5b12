"""SGD-influence beside the public data-attribution libraries, on the trust check's groups.

The same splits, random groups and retrained changes as benchmarks/groups.py (its stored
`groups-groups.csv`, column `actual_all`): each split's run is trained again (deterministic on
CPU; its validation loss and SGD-influence's group sums are checked against the stored ones),
every method scores every training image on the mean validation loss, a group's predicted change
is the sum of its members' scores, and the group Spearman is the Spearman correlation of
predicted and actual change over the split's groups (TRAK's linear datamodeling score).

Ours (influence/methods.py): SGD-influence ("sgd", "sgd-damped"), Koh & Liang ("kl"), TracIn
("tracin"). Peers, each through its own public API on the same model, checkpoints and tensors:
kronfluence (EK-FAC influence), TRAK (package `traker`, the epoch checkpoints as its models,
CPU BasicProjector), dattri (TracIn and the influence function by conjugate gradients) and
captum (TracInCP). Every score is turned to the project's sign: the estimated change of the
mean validation loss when the image is removed (negative = removing it lowers the loss).

The libraries live outside the product's environment (requirements-peers.txt):

    python -m pip install --no-deps --target .peers-lib -r requirements-peers.txt
    PYTHONPATH=.peers-lib python benchmarks/peers.py --data mnist,digits --resume
    PYTHONPATH=.peers-lib python benchmarks/peers.py --quick   # digits, split 0, small TRAK

Needs groups.py's results for the same splits (benchmarks/results/groups-groups.csv and
groups-times.csv, or --truth).
"""
from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the libraries' progress bars (read at import)
import tempfile  # noqa: E402
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import common
import groups
from common import LABELS
from influence.compare import holm

OURS = ["sgd", "sgd-damped", "kl", "tracin"]
TRAK_DIM = 2048  # TRAK's projection dimension (its default); --quick: 256


@dataclass
class Ground:
    """What every library gets: the trained model, its epoch checkpoints with TracIn's weight
    (the epoch's mean η over the batch size, as influence.baselines.tracin_scores), the
    training and validation tensors in training-position order."""
    model: nn.Module
    checkpoints: list[dict[str, torch.Tensor]]
    weights: list[float]
    train: TensorDataset
    val: TensorDataset
    seed: int
    trak_dim: int
    solved: dict[str, torch.Tensor] = field(default_factory=dict)  # a library's (H + λI)⁻¹ u

    def with_params(self, params: dict[str, torch.Tensor]) -> nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(params)
        return model.eval()


def ground(run, trak_dim: int, seed: int) -> Ground:
    epochs = run.schedule.epochs
    weights = []
    for k in range(1, epochs + 1):
        steps = run.schedule.epoch_steps(k - 1)
        weights.append(float(np.mean(run.schedule.lr[steps.start:steps.stop]))
                       / run.schedule.batch_size)
    val = run.part("val")
    return Ground(run.model, [{n: p.detach().clone() for n, p in run.checkpoints[k].items()}
                              for k in range(1, epochs + 1)], weights,
                  TensorDataset(run.objective.x, run.objective.y), TensorDataset(val.x, val.y),
                  seed, trak_dim)


def ce(outputs: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, y, reduction=reduction)


# --- the peers: each returns one score per training position, the project's sign -------------
def kronfluence_ekfac(g: Ground) -> np.ndarray:
    """kronfluence's EK-FAC influence at the final θ (its default damping: 0.1 × the mean
    eigenvalue), queried with every validation image; the mean over the queries is the score
    on the mean validation loss. kronfluence's pairwise score is g_queryᵀ (G + λI)⁻¹ g_train:
    positive when upweighting the training image lowers the query's loss, i.e. removing it
    raises it, the project's sign."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model
                with torch.no_grad():
                    y = torch.multinomial(logits.softmax(-1), 1).flatten()
            return ce(logits, y, "sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return ce(model(x), y, "sum")

    task = Classification()
    model = prepare_model(g.with_params(g.checkpoints[-1]), task)
    with tempfile.TemporaryDirectory() as folder:
        analyzer = Analyzer("peers", model, task, cpu=True, disable_tqdm=True,
                            disable_model_save=True, output_dir=folder)
        analyzer.fit_all_factors("ekfac", g.train, per_device_batch_size=512,
                                 factor_args=FactorArguments(strategy="ekfac"),
                                 overwrite_output_dir=True)
        analyzer.compute_pairwise_scores("scores", "ekfac", g.val, g.train,
                                         per_device_query_batch_size=512,
                                         per_device_train_batch_size=512,
                                         overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return scores.double().mean(0).numpy()


def trak_dim(g: Ground) -> int:
    """TRAK's projection dimension: g.trak_dim, at most half the training images. TRAK
    inverts Φᵀ Φ (projection dimension squared, summed over the training images) with no damping
    by default: with more dimensions than images it is singular."""
    return min(g.trak_dim, len(g.train) // 2)


def trak(g: Ground) -> np.ndarray:
    """TRAK (Park et al., 2023) with the epoch checkpoints as its models, on the validation
    images' margins (TRAK's image-classification output), projected to trak_dim(g) dimensions
    by TRAK's CPU BasicProjector (its CUDA projector needs a GPU), float32. A positive TRAK
    score: the training image raises the target's correct-class margin, so removing it raises
    its loss: the project's sign. The mean over the validation targets."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    model = g.with_params(g.checkpoints[-1])
    dim = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(dim, trak_dim(g), g.seed, ProjectionType.normal, "cpu",
                               block_size=100)
    with tempfile.TemporaryDirectory() as folder:
        traker = TRAKer(model, "image_classification", len(g.train), save_dir=folder,
                        device="cpu", projector=projector, use_half_precision=False,
                        logging_level=40)
        for i, params in enumerate(g.checkpoints):
            traker.load_checkpoint(params, model_id=i)
            for x, y in DataLoader(g.train, batch_size=256):
                traker.featurize((x, y), num_samples=len(x))
        traker.finalize_features()
        for i, params in enumerate(g.checkpoints):
            traker.start_scoring_checkpoint("val", params, model_id=i, num_targets=len(g.val))
            for x, y in DataLoader(g.val, batch_size=256):
                traker.score((x, y), num_samples=len(x))
        scores = traker.finalize_scores("val")
    return np.asarray(scores, dtype=np.float64).mean(1)


def _dattri_task(g: Ground, checkpoints: list[dict[str, torch.Tensor]],
                 mean_val_loss: bool = False):
    """dattri's AttributionTask: the cross-entropy of one image or a batch (torch.func style);
    with `mean_val_loss` its target is the mean validation loss itself, whatever the (one,
    dummy) test item: one inverse-Hessian-vector product instead of one per validation image
    (the scores are linear in the target's gradient, so the same as their mean)."""
    from dattri.task import AttributionTask

    def loss(params, data):
        x, y = data
        single = x.dim() == 3  # vmapped over images: one image without its batch axis
        out = torch.func.functional_call(g.model, params, x.unsqueeze(0) if single else x)
        return ce(out, y.unsqueeze(0) if single else y)

    def val_loss(params, _):
        return loss(params, g.val.tensors)

    return AttributionTask(loss_func=loss, model=g.with_params(checkpoints[-1]),
                           checkpoints=checkpoints,
                           target_func=val_loss if mean_val_loss else None)


def dattri_tracin(g: Ground) -> np.ndarray:
    """dattri's TracInAttributor over the epoch checkpoints, weighted by η_k/|S| like ours,
    gradients not normalised and not projected (dattri projects to 512 dimensions unless told
    otherwise). A positive score: the gradients align, the training image lowers the
    validation image's loss: the project's sign. The mean over the validation images."""
    from dattri.algorithm.tracin import TracInAttributor

    attributor = TracInAttributor(_dattri_task(g, g.checkpoints), torch.tensor(g.weights),
                                  normalized_grad=False, projector_kwargs=None, device="cpu")
    attributor.projector_kwargs = None  # the full gradients, as ours
    with torch.no_grad():  # else every score keeps the autograd graph of its gradients
        scores = attributor.attribute(DataLoader(g.train, batch_size=1000),
                                      DataLoader(g.val, batch_size=len(g.val)))
    return scores.double().mean(1).numpy()


def hessian_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """The training positions our Koh & Liang estimates the Hessian on (the draw of
    influence.baselines.influence_function, every image kept)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def dattri_if(g: Ground, damping: float = 0.01, hessian_samples: int = 500) -> np.ndarray:
    """dattri's IFAttributorCG at the final θ: the Hessian of the mean loss over the same
    `hessian_samples` training images as our K&L, plus damping·I, 20 conjugate-gradient steps
    (our K&L: 20 MINRES steps), on the mean validation loss (dattri's CG solves one system per
    test item, batched: one per validation image needs far more memory). Its score
    g_trainᵀ (H + λI)⁻¹ g_val is positive when removing the training image raises the
    validation loss: the project's sign. Its (H + λI)⁻¹ g_val goes to g.solved."""
    from dattri.algorithm.influence_function import IFAttributorCG

    attributor = IFAttributorCG(_dattri_task(g, [g.checkpoints[-1]], True), device="cpu",
                                max_iter=20, regularization=damping)
    sample = hessian_sample(len(g.train), hessian_samples, g.seed)
    attributor.cache(DataLoader(torch.utils.data.Subset(g.train, sample.tolist()),
                                batch_size=len(sample)))
    dummy = TensorDataset(torch.zeros(1, 1))
    with torch.no_grad():
        scores = attributor.attribute(DataLoader(g.train, batch_size=1000), DataLoader(dummy))
        u = attributor.generate_test_rep(0, (torch.zeros(1, 1),))
        g.solved["dattri-if"] = attributor.transform_test_rep(0, u)[0]
    return scores.double()[:, 0].numpy()


def solver_residuals(run, seed: int, damping: float = 0.01, hessian_samples: int = 500,
                     iterations: int = 20, theirs: torch.Tensor | None = None) -> dict:
    """Why two solvers of the same system disagree: the relative residual
    ‖(H + λI)v − u‖/‖u‖ of our K&L's MINRES solution and of dattri's CG solution (`theirs`),
    H the Hessian of the mean loss on the same training images, u the mean validation loss's
    gradient."""
    from influence.baselines import hvp, inverse_hvp
    from influence.sgd_influence import loss_gradient

    theta = run.theta
    on = torch.zeros(len(run.train_ids), dtype=torch.bool)
    on[hessian_sample(len(run.train_ids), hessian_samples, seed)] = True
    u = loss_gradient(run.val_loss_fn, theta)
    flat = lambda p: torch.cat([t.reshape(-1) for t in p.values()]).double()  # noqa: E731

    def residual(v: dict) -> float:
        hv = flat(hvp(run.objective, theta, on, v)) + damping * flat(v)
        return float((hv - flat(u)).norm() / flat(u).norm())

    found = {"kl": residual(inverse_hvp(run.objective, theta, on, u, damping, iterations))}
    if theirs is not None:
        shapes, i, v = theta, 0, {}
        for k, t in shapes.items():
            v[k] = theirs[i:i + t.numel()].reshape(t.shape).to(t.dtype)
            i += t.numel()
        found["dattri-if"] = residual(v)
    return found


def captum_tracincp(g: Ground) -> np.ndarray:
    """captum's TracInCP over the epoch checkpoints (every layer), each weighted by the
    learning rate its load function returns (η_k/|S|, as ours). A positive score: a proponent,
    the project's sign. The mean over the validation images."""
    from captum.influence import TracInCP

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for k, (params, w) in enumerate(zip(g.checkpoints, g.weights)):
            paths.append(str(Path(folder) / f"epoch{k + 1}.pt"))
            torch.save({"params": params, "weight": w}, paths[-1])

        def load(model, path):
            saved = torch.load(path, weights_only=True)
            model.load_state_dict(saved["params"])
            return saved["weight"]

        model = g.with_params(g.checkpoints[-1])
        tracin = TracInCP(model, g.train, paths, checkpoints_load_func=load,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=1000,
                          sample_wise_grads_per_batch=True)
        x, y = g.val.tensors
        scores = tracin.influence((x, y))  # validation × training
    return scores.double().mean(0).numpy()


PEERS = {  # key → (library, what it computes, scoring function, our method it should match)
    "kronfluence-ekfac": ("kronfluence", "influence function, EK-FAC", kronfluence_ekfac, "kl"),
    "trak": ("traker", "TRAK, epoch checkpoints", trak, "tracin"),
    "dattri-tracin": ("dattri", "TracIn", dattri_tracin, "tracin"),
    "dattri-if": ("dattri", "influence function, CG", dattri_if, "kl"),
    "captum-tracincp": ("captum", "TracInCP", captum_tracincp, "tracin"),
}


def name_of(key: str) -> str:
    return LABELS[key] if key in LABELS else f"{PEERS[key][0]}: {PEERS[key][1]}"


# --- one split ------------------------------------------------------------------------------
def stored_truth(truth: pd.DataFrame, times: pd.DataFrame, name: str, split: int):
    """The split's stored groups (in order) and its run's stored validation loss."""
    part = truth[(truth.data == name) & (truth.split == split)].sort_values("group")
    if part.empty:
        raise SystemExit(f"error: no stored groups for {name} split {split}: run "
                         "benchmarks/groups.py for it first")
    val_loss = times[(times.data == name) & (times.split == split)].val_loss.iloc[0]
    return part.reset_index(drop=True), float(val_loss)


def one_split(data, name: str, split: int, truth: pd.DataFrame, times: pd.DataFrame, a):
    part, stored_val_loss = stored_truth(truth, times, name, split)
    run = common.train_run(data, split, groups.EPOCHS[name], name)
    val_loss = run.metrics["val_loss"]
    if not np.isclose(val_loss, stored_val_loss, rtol=1e-5, atol=1e-7):
        raise SystemExit(f"error: {name} split {split} trained to validation loss {val_loss} "
                         f"here, {stored_val_loss} in groups.py's run: not the same run")
    members = groups.random_groups(run.train_ids, len(part), a.share, split)
    assert [len(m) for m in members] == part["size"].tolist(), "not groups.py's groups"
    position = [[run.position[sid] for sid in m] for m in members]
    scores, seconds = common.method_scores(run, OURS, split)
    g = ground(run, a.trak_dim, split)
    for key in a.peers:
        began = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):  # e.g. kronfluence's sampled labels
                torch.manual_seed(split)
                scores[key] = PEERS[key][2](g)
        except Exception as e:  # noqa: BLE001  a library that fails is reported, not fatal
            print(f"{key} failed: {type(e).__name__}: {e}", flush=True)
            scores[key] = np.full(len(run.train_ids), np.nan)
        seconds[key] = time.perf_counter() - began
    residual = solver_residuals(run, split, theirs=g.solved.get("dattri-if"))
    sums = pd.DataFrame({f"predicted_{m}": [float(s[p].sum()) for p in position]
                         for m, s in scores.items()})
    sums.insert(0, "group", part.group)
    sums.insert(0, "split", split)
    sums.insert(0, "data", name)
    sums["actual_all"] = part.actual_all
    sums["stored_predicted_sgd"] = part.predicted_sgd
    rows = []
    for m, s in scores.items():
        same = PEERS[m][3] if m in PEERS else None
        ok = np.isfinite(s).all()
        rows.append({"data": name, "split": split, "method": m,
                     "library": PEERS[m][0] if m in PEERS else "ours",
                     "spearman": float(stats.spearmanr(sums[f"predicted_{m}"], part.actual_all
                                                       ).statistic) if ok else np.nan,
                     "seconds": seconds[m], "val_loss": val_loss,
                     "compared_with": same or "",
                     "image_spearman": float(stats.spearmanr(s, scores[same]).statistic)
                     if same and ok else np.nan,
                     "image_pearson": float(stats.pearsonr(s, scores[same]).statistic)
                     if same and ok else np.nan,
                     "scale": float(np.dot(s, scores[same]) / np.dot(scores[same], scores[same]))
                     if same and ok else np.nan, "solver_residual": residual.get(m, np.nan)})
    print(f"{name} split {split}: group Spearman " + " · ".join(
        f"{r['method']} {r['spearman']:.2f} ({r['seconds']:.0f} s)" for r in rows), flush=True)
    return rows, sums.to_dict("records")


# --- report ---------------------------------------------------------------------------------
def table(rho: pd.DataFrame) -> pd.DataFrame:
    """Per data set and method: group Spearman mean ± std over splits, and SGD-influence minus
    it paired by split (t-test; Holm over a data set's tests)."""
    rows = []
    for name, per_data in rho.groupby("data", sort=False):
        wide = per_data.pivot(index="split", columns="method", values="spearman")
        secs = per_data.groupby("method").seconds.mean()
        for m in dict.fromkeys(per_data.method):
            diff = wide["sgd"] - wide[m]
            both = diff.notna()
            p = (stats.ttest_rel(wide["sgd"][both], wide[m][both]).pvalue
                 if m != "sgd" and both.sum() > 1 else np.nan)
            rows.append({"data": groups.TITLE[name], "method": name_of(m),
                         "library": PEERS[m][0] if m in PEERS else "ours (influence/methods.py)",
                         "splits": int(wide[m].notna().sum()),
                         "group Spearman": common.mean_std(wide[m]),
                         "SGD-influence − it": "" if m == "sgd" else common.mean_std(diff),
                         "p (paired t)": float(p), "seconds per split": f"{secs[m]:.1f}",
                         "_key": m, "_data": name, "_diff": diff.mean()})
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("p (paired t)") + 1, "p (Holm)",
               out.groupby("_data", sort=False)["p (paired t)"].transform(holm))
    return out


def versus_peers(rho: pd.DataFrame, base: str) -> pd.DataFrame:
    """`base` (one of ours) minus each peer library's method, per data set, paired by split
    (t-test; Holm over the peers of the data set: the target's family)."""
    tables = []
    for name, per_data in rho.groupby("data", sort=False):
        wide = per_data.pivot(index="split", columns="method", values="spearman")
        rows = []
        for m in [k for k in PEERS if k in wide]:
            both = wide[[base, m]].dropna()
            diff = both[base] - both[m]
            p = stats.ttest_rel(both[base], both[m]).pvalue if len(both) > 1 else np.nan
            rows.append({"data": groups.TITLE[name], "comparison": f"{LABELS[base]} − "
                         f"{name_of(m)}", "splits": len(both),
                         "group Spearman difference": common.mean_std(diff),
                         "p (paired t)": float(p), "_data": name, "_key": m,
                         "_diff": diff.mean()})
        part = pd.DataFrame(rows)
        part.insert(part.columns.get_loc("p (paired t)") + 1, "p (Holm)",
                    holm(part["p (paired t)"]))
        tables.append(part)
    return pd.concat(tables, ignore_index=True)


def verdict(tests: pd.DataFrame, base: str, peers: list[str]) -> list[str]:
    """The target, per data set: `base` ahead of every peer library in `tests` (rows with
    _data, _key, _diff = base minus it, p (Holm)): higher, paired p (Holm) < 0.05."""
    lines = []
    for name, part in tests[tests._key.isin(peers)].groupby("_data", sort=False):
        ahead = len(part) == len(peers) and bool(((part["p (Holm)"] < 0.05)
                                                  & (part._diff > 0)).all())
        behind = [name_of(k) for k in part[~(part._diff > 0)]._key]
        unsure = [f"{name_of(k)} (Holm p = {p:.2g})" for k, p in zip(
            part._key, part["p (Holm)"]) if name_of(k) not in behind and not p < 0.05]
        lines.append(f"- {groups.TITLE[name]}: {LABELS[base]} ahead of every peer library in "
                     f"group Spearman (paired by split, Holm p < 0.05): {common.met(ahead)}"
                     + (f"; not ahead on average of: {', '.join(behind)}" if behind else "")
                     + (f"; ahead on average, not significantly, of: {', '.join(unsure)}"
                        if unsure else "") + ".")
    return lines


def agreement(rho: pd.DataFrame) -> pd.DataFrame:
    """Each library's per-image scores against our method of the same kind, on the same run."""
    peers = rho[rho.compared_with != ""].dropna(subset=["image_spearman"])
    rows = []
    for (name, m), part in peers.groupby(["data", "method"], sort=False):
        rows.append({"_data": name, "_key": m, "_ours": part.compared_with.iloc[0],
                     "data": groups.TITLE[name], "library method": name_of(m),
                     "ours": LABELS[part.compared_with.iloc[0]],
                     "per-image Spearman": common.mean_std(part.image_spearman),
                     "per-image Pearson": common.mean_std(part.image_pearson),
                     "scale (least squares, theirs ≈ c·ours)": f"{part.scale.mean():.3g}"})
    out = pd.DataFrame(rows)
    solved = rho.dropna(subset=["solver_residual"]) if "solver_residual" in rho else rho[:0]
    if len(solved) and len(out):
        residual = solved.groupby(["data", "method"], sort=False).solver_residual.agg(
            lambda r: f"{r.mean():.2f} (max {r.max():.2f})")
        out["relative residual ‖(H + λI)v − u‖/‖u‖: theirs; ours"] = [
            f"{residual[d, m]}; {residual[d, o]}" if (d, m) in residual else ""
            for d, m, o in zip(out._data, out._key, out._ours)]
    return out.drop(columns=["_data", "_key", "_ours"], errors="ignore")


NOTES = {
    "dattri-tracin": "the same sum as ours (η_k/|S|·⟨∇L_val(θ_k), ∇ℓ_j(θ_k)⟩ over the epoch "
    "checkpoints, full gradients, unprojected): equal up to float32 rounding.",
    "captum-tracincp": "the same sum as ours, through captum's per-sample gradients: equal up "
    "to float32 rounding.",
    "dattri-if": "the same system as our Koh & Liang — the Hessian of the mean loss on the "
    "same 500 training images, damping 0.01, 20 steps — solved by conjugate gradients where "
    "ours uses MINRES. H + λI of a network after a few epochs of SGD is indefinite; CG assumes "
    "a positive definite matrix and its 20-step solution is further from the exact one (the "
    "relative residual column: above 1 means CG ended further from a solution than v = 0), so "
    "the two differ by their solvers' errors, and neither is the exact solution. Ours "
    "divides by n (the mean training loss), dattri does not: the scale.",
    "kronfluence-ekfac": "a different curvature: the EK-FAC approximation of the Gauss–Newton "
    "matrix (positive semi-definite, fitted on all training images with labels sampled from "
    "the model, damping 0.1 × its mean eigenvalue) instead of the exact Hessian on 500 "
    "images; the losses are summed, not averaged: the scale.",
    "trak": "a different estimator: random projections of the gradients of the "
    "correct-class margin, a Gauss–Newton-like kernel inverse per checkpoint, averaged over the "
    "epoch checkpoints of one run (TRAK's paper ensembles independently trained models); "
    "set beside TracIn only because both use the epoch checkpoints.",
}


RAN_HERE = [
    "TRAK's default projector (CudaProjector, the `fast_jl` CUDA kernels) needs a GPU: TRAK's "
    "own CPU BasicProjector (Gaussian) is used instead. TRAK inverts Φᵀ Φ with no damping by "
    "default, so the projection has at most half as many dimensions as there are training "
    "images (fewer than the default 2,048 on digits).",
    "dattri's TracIn projects gradients to 512 dimensions by default: turned off, to compute "
    "the same sum as ours. Its attribute() keeps the autograd graph of every score when the "
    "parameters require gradients (on digits' 36 checkpoints the memory grew until the "
    "process was killed): it is called under torch.no_grad().",
    "dattri's IFAttributorCG solves one system per test item, vmapped: for every validation "
    "image at once it could not allocate its Hessian-vector products within 6 GB on digits; "
    "its target is the mean validation loss instead (one system), which gives the same scores as the mean over the "
    "validation images (they are linear in the target's gradient).",
    "kronfluence runs on the CPU with `cpu=True`; accelerate, which it imports, ran without "
    "psutil and huggingface_hub, two of its declared dependencies, not installed here.",
    "captum's TracInCP with sample_wise_grads_per_batch=True: per-sample gradients by hooks, "
    "faster than its default per-sample Jacobians.",
]


def report(rho: pd.DataFrame, sums: pd.DataFrame, truth: pd.DataFrame, a, out: Path) -> dict:
    summary = table(rho)
    agree = agreement(rho)
    stored = sums.merge(truth, on=["data", "split", "group"], suffixes=("", "_stored"))
    setup = []
    for name, part in rho.groupby("data", sort=False):
        s = stored[stored.data == name]
        gaps = ", ".join(f"{LABELS[m]} {gap(s, m):.1e}" for m in ("sgd", "kl", "tracin"))
        setup.append(f"- {groups.TITLE[name]}: {part.split.nunique()} splits "
                     f"({', '.join(map(str, sorted(part.split.unique())))}), "
                     f"{s.groupby('split').size().iloc[0]} random groups of 5 % per split; the "
                     f"run trained again to the stored validation loss (mean "
                     f"{part.val_loss.mean():.4f}); our group sums here against groups.py's "
                     f"stored ones, largest relative gap: {gaps}.")
    peers = [k for k in PEERS if k in set(rho.method)]
    damped = versus_peers(rho, "sgd-damped")
    verdicts = verdict(summary, "sgd", peers) + verdict(damped, "sgd-damped", peers)
    notes = [f"- {name_of(k)}: {NOTES[k]}" for k in PEERS if k in set(rho.method)]
    versions = ", ".join(f"{lib} {v}" for lib, v in library_versions().items())
    common.write_report(out, a.name_out, "SGD-influence beside the public attribution "
                        "libraries", common.command(), [
        "Install (outside the product's environment): `python -m pip install --no-deps "
        "--target .peers-lib -r requirements-peers.txt`, run with `PYTHONPATH=.peers-lib`. "
        f"Versions: {versions}; torch {torch.__version__.split('+')[0]}, one thread.",
        "Setup: the splits, random groups and actual changes (retraining all epochs by "
        "counterfactual SGD, Definition 2) of `groups.md`, read from `groups-groups.csv`:\n\n"
        + "\n".join(setup) + "\n\nA gap above 0: the float32 arithmetic of the two "
        "processes differs in rounding (SGD-influence's sums show how little), and K&L's 20 "
        "MINRES steps carry it further; compare the group Spearman of ours with `groups.md`'s."
        "\n\nEvery method scores every training image on the mean "
        "validation loss with the project's sign (the estimated change when the image is "
        "removed; negative = removing it lowers the loss); a group's prediction is the sum of "
        "its members' scores. Ours: SGD-influence (Algorithm 2), SGD-influence damped "
        "(λ = 0.03), Koh & Liang (Hessian on 500 random training images, 20 MINRES steps, "
        "damping 0.01) and TracIn (epoch checkpoints). Peers: kronfluence EK-FAC "
        "(its default factors and damping, every validation image a query), TRAK "
        f"(the epoch checkpoints as its models, BasicProjector to {a.trak_dim} dimensions or "
        "half the training images if fewer, float32), dattri TracIn (full "
        "gradients, η_k/|S| weights) and influence function (CG, 20 steps, damping 0.01, "
        "Hessian on 500 random training images), captum TracInCP (every layer, η_k/|S| "
        "weights).",
        "**Group Spearman** (mean ± std over splits) and SGD-influence minus each method "
        "paired by split (t-test):\n\n" + common.markdown(summary.filter(regex="^[^_]"))
        + "\n\np (Holm): over a data set's tests ("
        + ", ".join(f"{groups.TITLE[d]}: {int(np.isfinite(t['p (paired t)']).sum())}, "
                    f"{int((t['p (Holm)'] < 0.05).sum())} below 0.05"
                    for d, t in summary.groupby("_data", sort=False)) + "). "
        "Seconds per split: scoring every training image (one torch thread on a shared "
        "2-core CPU), the method alone.",
        "SGD-influence (damped) against each peer library, paired by split (t-test; Holm "
        "over these tests of a data set):\n\n" + common.markdown(damped.filter(regex="^[^_]")),
        "**Target** (the issue's: SGD-influence, Holm over the data set's tests of the first "
        "table; the damped variant beside it, Holm over the second's):\n\n"
        + "\n".join(verdicts),
        "**Agreement with our implementations** on the same run: each library's per-image "
        "scores against ours of the same kind (Spearman and Pearson over the training images, "
        "and the least-squares factor c of theirs ≈ c·ours):\n\n"
        + (common.markdown(agree) if len(agree) else "(none computed)") + "\n\n"
        + "\n".join(notes),
        "**How each library ran here** (all four installed and ran on this CPU): "
        + " ".join(RAN_HERE),
        f"Per split and method: `{a.name_out}.csv`; every group's sums: "
        f"`{a.name_out}-groups.csv`."])
    first = summary[summary._data == summary._data.iloc[0]]
    return {f"spearman_{k.replace('-', '_')}": float(v) for k, v in
            rho[rho.data == first._data.iloc[0]].groupby("method").spearman.mean().items()}


def gap(groups_both: pd.DataFrame, method: str) -> float:
    """Largest relative gap between a method's group sums here and groups.py's stored ones."""
    here, kept = groups_both[f"predicted_{method}"], groups_both[f"predicted_{method}_stored"]
    return float((here / kept - 1).abs().max())


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for lib in dict.fromkeys(p[0] for p in PEERS.values()):
        try:
            found[lib] = version(lib)
        except PackageNotFoundError:
            found[lib] = "not installed"
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist", help="digits, mnist or both")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--peers", default=",".join(PEERS), help="which libraries' methods")
    parser.add_argument("--trak-dim", type=int, default=TRAK_DIM)
    parser.add_argument("--share", type=float, default=0.05, help="group size (as groups.py)")
    parser.add_argument("--truth", default=str(common.RESULTS / "groups-groups.csv"),
                        help="groups.py's per-group CSV (its -times.csv beside it)")
    common.add_data_option(parser)
    common.add_resume_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.data, a.splits, a.trak_dim = "digits", 1, min(a.trak_dim, 256)
    common.setup(a.threads)
    a.peers = [p for p in a.peers.split(",") if p]
    names = a.data.split(",")
    truth = pd.read_csv(a.truth)
    times = pd.read_csv(a.truth.replace("-groups.csv", "-times.csv"))
    a.name_out = "peers-quick" if a.quick else "peers"  # rows per data set and split
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{a.name_out}.csv", out / f"{a.name_out}-groups.csv"]
    data = {name: common.image_data(name == "digits", a.data_dir) for name in names}
    jobs = [(name, split) for name in names for split in range(a.splits)]
    rho, sums = common.kept_tables(files, a.resume, jobs, lambda name, split: one_split(
        data[name], name, split, truth, times, a), last=0)
    rho = rho.assign(compared_with=rho.compared_with.fillna(""))
    result = report(rho, sums, truth, a, out)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
