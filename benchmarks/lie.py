"""Table 1 of the paper (Section 7.1): how well estimated influence ranks the true effect of
leaving one instance out.

Per seed: 200 training and 200 validation instances drawn at random, standardised with the
training mean and std; the paper's LogReg or DNN trained by plain SGD with its settings; the
truth is the actual change of the mean validation loss in 200 counterfactual SGD runs
(Definition 2: same initialisation, batches and step sizes, instance j skipped), computed at
once by `counterfactual_sgd`. Metrics: Kendall's τ against the truth, and the Jaccard index of
{10 most negative} ∪ {10 most positive}. Methods: SGD-influence (Algorithm 2 over all epochs),
the forward first-order-exact estimate for all 200 instances (Algorithm 2 plus the cross-epoch
term), the validation loss at θ[T] plus that estimate's displacement, Algorithm 2 with its
REFINE_M most negative and REFINE_M most positive re-scored by the forward estimate, Koh & Liang (exact damped Hessian at θ[T]), TracIn (epoch checkpoints).
The SGD-based methods are timed (seconds per seed, and as a ratio to Algorithm 2's time).

    python benchmarks/lie.py --data mnist --model logreg --seeds 30
    python benchmarks/lie.py --quick          # digits 1 vs 7, 3 seeds
"""
from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

import common
from influence import baselines, models
from influence.compare import holm
from influence.sgd import (Objective, SGDConfig, counterfactual_sgd, initial_params,
                           make_schedule, per_sample_loss)
from influence.sgd_influence import (forward_influence, forward_loss_change, loss_gradient,
                                     refine_extremes, retrace)

N_TRAIN = N_VAL = 200
REFINE_M = 50  # ends re-scored by the forward estimate: 2·50 = half of the 200 instances
# Extra λ for Koh & Liang (the model's own L2 is in H). Each λ is its own solve with the same
# dense H, so adding one leaves the others unchanged.
DAMPINGS = (0.0, 0.01, 0.1, 1.0)
# Headline λ: the authors' code used the model's L2 alone for LogReg and λ = 1 for the DNN.
HEADLINE_DAMPING = {"logreg": 0.0, "dnn": 1.0}
# Published Table 1 (mean of 30 seeds): τ proposed, τ K&L, Jaccard proposed, Jaccard K&L.
PUBLISHED = {("adult", "logreg"): (.93, .85, .80, .60), ("mnist", "logreg"): (.95, .70, .83, .41),
             ("adult", "dnn"): (.75, .54, .59, .32), ("mnist", "dnn"): (.45, .27, .37, .27)}

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income"]


def sgd_config(data: str, model: str, l2: float, seed: int) -> SGDConfig:
    """The paper's SGD settings: LogReg batch 5, η_t = 0.1/√t, 5 epochs (20 on Adult);
    DNN batch 20, η = 0.1, 10 epochs."""
    if model == "logreg":
        return SGDConfig(epochs=20 if data == "adult" else 5, batch_size=5, lr=0.1,
                         lr_decay="inv_sqrt", l2=l2, seed=seed)
    return SGDConfig(epochs=10, batch_size=20, lr=0.1, lr_decay="constant", l2=l2, seed=seed)


def load_adult(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """UCI Adult (train and test files joined): income > 50K, numeric columns as they are
    (fnlwgt as log1p), categorical ones one-hot; '?' is its own category."""
    parts = [pd.read_csv(folder / f, names=ADULT_COLUMNS, skipinitialspace=True,
                         skiprows=1 if "test" in f else 0)
             for f in common.ADULT]
    frame = pd.concat(parts, ignore_index=True).dropna(subset=["income"])
    y = frame.pop("income").str.rstrip(".").eq(">50K").to_numpy(np.int64)
    frame["fnlwgt"] = np.log1p(frame["fnlwgt"])
    x = pd.get_dummies(frame, dtype=np.float64).to_numpy(np.float64)
    return x, y


def load_binary(name: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64, N×d) and 0/1 labels: MNIST 1 vs 7 (the real MNIST test set),
    Adult, or digits 1 vs 7 (offline, for --quick)."""
    if name == "adult":
        return load_adult(common.adult_folder(data_dir))
    images = common.image_data(name == "digits", data_dir)
    pick = np.isin(images.labels, [1, 7])
    x = images.images[pick].reshape(pick.sum(), -1).astype(np.float64) / 255
    return x, (images.labels[pick] == 7).astype(np.int64)


def one_seed(x: np.ndarray, y: np.ndarray, data: str, model_name: str, seed: int,
             dtype: torch.dtype) -> dict:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(y), min(N_TRAIN + N_VAL, len(y)), replace=False)  # digits: 361
    train, val = pick[:N_TRAIN], pick[N_TRAIN:]
    scaler = StandardScaler().fit(x[train])
    as_tensor = lambda a: torch.as_tensor(scaler.transform(a), dtype=dtype)  # noqa: E731
    x_tr, x_va = as_tensor(x[train]), as_tensor(x[val])
    y_tr, y_va = torch.as_tensor(y[train]), torch.as_tensor(y[val])

    if model_name == "logreg":  # α = 1/(C·n), C by 5-fold cross-validation (as the authors)
        with warnings.catch_warnings():  # scikit-learn's notices of future defaults
            warnings.simplefilter("ignore", FutureWarning)
            cv = LogisticRegressionCV(cv=5, scoring="accuracy", max_iter=1000).fit(
                scaler.transform(x[train]), y[train])
        l2 = 1.0 / (float(cv.C_[0]) * N_TRAIN)
    else:
        l2 = 0.001
    model = models.build(model_name, (x.shape[1], 1, 1), 2, seed).to(dtype)
    cfg = sgd_config(data, model_name, l2, seed)
    obj = Objective(model, x_tr, y_tr, l2=l2)
    schedule = make_schedule(N_TRAIN, cfg)
    everyone = torch.ones(N_TRAIN, dtype=torch.bool)
    theta0 = initial_params(model, "cpu", dtype)
    # Plain SGD, one epoch at a time to keep the epoch checkpoints. (counterfactual_sgd with the
    # all-kept mask: run_sgd's divergence guard trips on single large batch losses that the
    # standardised MNIST pixels produce early on; the authors' code has no guard.)
    checkpoints = {0: theta0}
    for k in range(cfg.epochs):
        last = counterfactual_sgd(obj, schedule, checkpoints[k], everyone[None], range(k, k + 1))
        checkpoints[k + 1] = {name: v[0] for name, v in last.items()}
    theta = checkpoints[cfg.epochs]

    def val_loss(th):
        return per_sample_loss(obj.outputs(th, x_va), y_va).mean()

    # Truth: the change of validation loss in 200 counterfactual SGD runs (Definition 2), with
    # the plain run as row 0 of the same batched computation.
    keeps = torch.cat([everyone[None], ~torch.eye(N_TRAIN, dtype=torch.bool)])
    thetas = counterfactual_sgd(obj, schedule, theta0, keeps)
    with torch.no_grad():
        losses = np.array([float(val_loss({k: v[m] for k, v in thetas.items()}))
                           for m in range(N_TRAIN + 1)])
    base, truth = losses[0], losses[1:] - losses[0]

    u = loss_gradient(val_loss, theta)
    estimates, seconds = sgd_estimates(obj, schedule, checkpoints, u, val_loss)
    estimates["tracin"] = baselines.tracin_scores(obj, schedule, checkpoints, val_loss)
    H = baselines.dense_hessian(obj, theta, everyone)
    for lam in DAMPINGS:
        estimates[f"kl@{lam:g}"] = baselines.influence_function(obj, theta, u, everyone, lam, H=H)

    row = {"seed": seed, "l2": l2, "val_loss": base,
           "truth_abs_median": float(np.median(np.abs(truth))),
           **{f"{name}_seconds": s for name, s in seconds.items()}}
    for name, est in estimates.items():
        row[f"{name}_tau"] = float(kendalltau(est, truth).statistic)
        row[f"{name}_jaccard"] = common.jaccard_extremes(est, truth)
    return row


def sgd_estimates(obj: Objective, schedule, checkpoints, u, val_loss) -> tuple[dict, dict]:
    """Algorithm 2 ("sgd"), the forward first-order-exact estimate for every instance
    ("forward"), the validation loss at its displaced parameters ("forward-loss") and
    Algorithm 2 with its ends refined ("refined"), with the seconds each took (refined:
    Algorithm 2's time plus the refinement)."""
    everyone = torch.ones(N_TRAIN, dtype=torch.bool)
    epochs = range(schedule.epochs)
    began = time.perf_counter()
    sgd = retrace(obj, schedule, checkpoints, lambda k: everyone, u, epochs)
    sgd_s = time.perf_counter() - began
    began = time.perf_counter()
    forward = forward_influence(obj, schedule, checkpoints, lambda k: everyone, u,
                                torch.arange(N_TRAIN))
    forward_s = time.perf_counter() - began
    began = time.perf_counter()
    forward_loss = forward_loss_change(obj, schedule, checkpoints, lambda k: everyone, val_loss,
                                       torch.arange(N_TRAIN))
    forward_loss_s = time.perf_counter() - began
    began = time.perf_counter()
    refined = refine_extremes(obj, schedule, checkpoints, lambda k: everyone, u, sgd, REFINE_M)
    refined_s = sgd_s + time.perf_counter() - began
    estimates = {"sgd": sgd, "forward": forward, "forward-loss": forward_loss,
                 "refined": refined}
    return ({k: v.double().numpy() for k, v in estimates.items()},
            {"sgd": sgd_s, "forward": forward_s, "forward-loss": forward_loss_s,
             "refined": refined_s})


def with_headline(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per-seed values plus kl_tau / kl_jaccard, always copied from the kl@λ columns of the
    headline damping (any stored kl_tau / kl_jaccard is replaced)."""
    lam = f"kl@{HEADLINE_DAMPING[model]:g}"
    return frame.assign(kl_tau=frame[f"{lam}_tau"], kl_jaccard=frame[f"{lam}_jaccard"])


def write_per_seed(out: Path, name: str, frame: pd.DataFrame, model: str) -> Path:
    """benchmarks/results/<name>.csv: the measured per-seed columns and the derived headline
    kl_tau / kl_jaccard (one place, so the two never disagree)."""
    path = out / f"{name}.csv"
    with_headline(frame, model).to_csv(path, index=False)
    return path


def table_for(frame: pd.DataFrame, data: str, model: str, dtype: str) -> pd.DataFrame:
    """One Table-1 row per method: mean ± std over seeds next to the published mean."""
    frame = with_headline(frame, model)
    published = PUBLISHED.get((data, model), (math.nan,) * 4)
    rows = []
    for method, label, pub_tau, pub_jac in [("sgd", "SGD-influence", published[0], published[2]),
                                            *[(m, label, math.nan, math.nan)
                                              for m, label in FORWARD_LABELS.items()],
                                            ("kl", "Koh & Liang", published[1], published[3]),
                                            ("tracin", "TracIn", math.nan, math.nan)]:
        if f"{method}_tau" not in frame:  # runs from before the forward estimate existed
            continue
        rows.append({"data": data, "model": model, "dtype": dtype, "method": label,
                     "seeds": len(frame), "tau": common.mean_std(frame[f"{method}_tau"]),
                     "jaccard": common.mean_std(frame[f"{method}_jaccard"]),
                     "paper tau": pub_tau, "paper jaccard": pub_jac})
    return pd.DataFrame(rows).astype(object).fillna("–")


def time_section(tables: list[pd.DataFrame]) -> list[str]:
    """The timing table of the configurations that were timed (none before the forward
    estimate existed)."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return []
    table = pd.concat(tables).sort_values(["model", "data", "dtype"], kind="stable")
    return [f"Time per seed for the 200 training instances (the refined ranking: Algorithm 2 "
            f"plus the forward estimate for its {REFINE_M} most negative and {REFINE_M} most "
            "positive), with the threads of the run note, on a machine shared with other "
            "work:\n\n" + common.markdown(table)]


FORWARD_NOTE = (
    "Forward (first-order exact): Algorithm 2 plus the term it drops, instance j's gradient "
    "taken at the counterfactual parameters when j returns in a later epoch "
    "(influence.sgd_influence.forward_influence), for all 200 instances. Forward, loss at "
    "θ[T] + δ_j: the same displacement δ_j, with the validation loss evaluated there instead "
    "of its first-order term ⟨u, δ_j⟩ (forward_loss_change). Ends refined: "
    f"Algorithm 2 with its {REFINE_M} most negative and {REFINE_M} most positive re-scored by "
    f"the forward estimate; with 200 instances that is {2 * REFINE_M} of them, half.")
FORWARD_LABELS = {"forward": "Forward (first-order exact)",
                  "forward-loss": "Forward, loss at θ[T] + δ_j",
                  "refined": f"SGD-influence, ends refined (m = {REFINE_M})"}


def forward_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Each forward-based method against Algorithm 2 on the same seeds: mean paired difference
    of τ and of the Jaccard index, Wilcoxon signed-rank p-value, Holm-corrected over the
    comparisons of this table."""
    from scipy.stats import wilcoxon

    rows = []
    for m, label in FORWARD_LABELS.items():
        for metric in ("tau", "jaccard"):
            diff = frame[f"{m}_{metric}"] - frame[f"sgd_{metric}"]
            p = wilcoxon(diff).pvalue if (diff != 0).any() else 1.0
            rows.append({"method": label, "metric": metric, "seeds": len(diff),
                         "mean − Algorithm 2": f"{diff.mean():+.4f}",
                         "seeds higher / lower": f"{(diff > 0).sum()} / {(diff < 0).sum()}",
                         "p (Wilcoxon)": p})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p (Wilcoxon)"])
    return table


def time_table(frame: pd.DataFrame, data: str, model: str, dtype: str) -> pd.DataFrame:
    """Seconds per seed of the SGD-based methods, and per-seed ratios to Algorithm 2's time."""
    labels = {"sgd": "SGD-influence (Algorithm 2)", **FORWARD_LABELS}
    return pd.DataFrame([{"data": data, "model": model, "dtype": dtype, "method": label,
                          "seconds": common.mean_std(frame[f"{m}_seconds"]),
                          "× Algorithm 2": common.mean_std(frame[f"{m}_seconds"] /
                                                           frame["sgd_seconds"])}
                         for m, label in labels.items() if f"{m}_seconds" in frame])


def damping_table(frame: pd.DataFrame) -> pd.DataFrame:
    lams = sorted(float(c[3:-4]) for c in frame.columns if c.startswith("kl@") and
                  c.endswith("_tau"))
    return pd.DataFrame([{"extra damping λ": lam,
                          "K&L tau": common.mean_std(frame[f"kl@{lam:g}_tau"]),
                          "K&L jaccard": common.mean_std(frame[f"kl@{lam:g}_jaccard"])}
                         for lam in lams])


def baselines_table(frames: dict[tuple[str, str, str], pd.DataFrame]) -> pd.DataFrame:
    """SGD-influence against each baseline on the same seeds: mean per-seed difference of τ and
    of Jaccard, the paired t-test (scipy.stats.ttest_rel) and its Holm correction over every
    test of the table."""
    from scipy.stats import ttest_rel

    rows = []
    for (data, model, dtype), frame in frames.items():
        frame = with_headline(frame, model)
        for other, label in [("kl", "Koh & Liang"), ("tracin", "TracIn")]:
            for metric in ("tau", "jaccard"):
                ours, theirs = frame[f"sgd_{metric}"], frame[f"{other}_{metric}"]
                rows.append({"data": data, "model": model, "dtype": dtype, "versus": label,
                             "metric": metric, "seeds": len(frame),
                             "mean difference": float((ours - theirs).mean()),
                             "p (paired t)": float(ttest_rel(ours, theirs).pvalue)})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p (paired t)"])
    return table


def row_report(out: Path, frame: pd.DataFrame, data: str, model: str, dtype: str, cmd: str,
               run_note: str) -> Path:
    """benchmarks/results/lie-<data>-<model>-<dtype>.md from the per-seed values."""
    name = f"lie-{data}-{model}-{dtype}"
    return common.write_report(
        out, name, f"Table 1 row: {data}, {model}, {dtype}", cmd,
        [f"{run_note} SGD settings: {sgd_config(data, model, 0.0, 0)}; L2 α = "
         f"{frame['l2'].mean():.4g} (mean over seeds; LogReg: 1/(C·n) with C per seed).",
         common.markdown(table_for(frame, data, model, dtype)),
         *([f"Paired against Algorithm 2 (same seeds):\n\n{common.markdown(forward_table(frame))}"]
           if "forward_tau" in frame else []),
         *time_section([time_table(frame, data, model, dtype)]),
         f"Koh & Liang with extra damping λ (headline: λ = {HEADLINE_DAMPING[model]:g}, as in "
         "the authors' code):\n\n" + common.markdown(damping_table(frame)),
         f"Per-seed values: `{name}.csv`."])


def rebuild(out: Path) -> None:
    """Rewrite every per-seed CSV (re-deriving kl_tau / kl_jaccard from the kl@λ columns),
    every per-configuration report and lie.md from the stored per-seed values, keeping the
    command and run note that produced each. Nothing is recomputed: a CSV without some λ of
    DAMPINGS (written before that λ was added) simply lists fewer λ in its damping table."""
    for csv in sorted(out.glob("lie-*.csv")):
        _, data, model, dtype = csv.stem.split("-")
        old = csv.with_suffix(".md").read_text().splitlines()
        note = next(ln for ln in old if " seeds, " in ln and " s on " in ln)
        frame = pd.read_csv(csv)
        write_per_seed(out, csv.stem, frame, model)
        row_report(out, frame, data, model, dtype,
                   common.read_command(csv.with_suffix(".md")), note.split(" SGD settings")[0])
    combined_report(out)


def combined_report(out: Path) -> Path | None:
    """benchmarks/results/lie.md: every configuration run so far (non-quick), one table."""
    frames, times, commands = {}, [], []
    for csv in sorted(out.glob("lie-*.csv")):
        _, data, model, dtype = csv.stem.split("-")
        if data == "digits":
            continue
        frames[data, model, dtype] = pd.read_csv(csv)
        times.append(time_table(frames[data, model, dtype], data, model, dtype))
        commands.append(common.read_command(csv.with_suffix(".md")))
    if not frames:
        return None
    order = ["model", "data", "dtype"]
    table = pd.concat([table_for(f, *key) for key, f in frames.items()]).sort_values(
        order, kind="stable")
    paired = baselines_table(frames).sort_values(order, kind="stable")
    return common.write_report(
        out, "lie", "Table 1 reproduction: SGD-influence vs Koh & Liang vs TracIn",
        commands,
        [common.markdown(table),
         "τ: Kendall's rank correlation with the true change of validation loss over the 200 "
         "training instances (200 counterfactual SGD runs per seed); jaccard: overlap of the "
         "10 most negative ∪ 10 most positive. Mean ± std over seeds. K&L, as in the "
         "authors' code: the model's own L2 only (LogReg), extra damping λ = 1 (DNN); the "
         "per-configuration files list other λ.",
         "SGD-influence against each baseline on the same seeds: mean difference = mean over "
         "seeds of (SGD-influence's τ or Jaccard − the baseline's), with the paired t-test "
         "over seeds:\n\n"
         + common.markdown(paired) + "\n\n" + common.holm_note(paired),
         FORWARD_NOTE, *time_section(times)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["mnist", "adult", "digits"], default="mnist")
    parser.add_argument("--model", choices=["logreg", "dnn"], default="logreg")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--data-dir", default=None,
                        help="the folder of the data files (default: MNIST's test set or "
                             "Adult's two files from the data folder, $DATA_DIR; "
                             "docs/evidence.md says where they go)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--rebuild", action="store_true",
                        help="only rewrite the reports from the per-seed CSVs under --out")
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.rebuild:
        return rebuild(Path(a.out))
    if a.quick:
        a.data, a.seeds = "digits", min(a.seeds, 3)
    common.setup(a.threads)
    out = Path(a.out)
    x, y = load_binary(a.data, a.data_dir)
    began = time.perf_counter()
    rows = []
    for seed in range(a.seeds):
        rows.append(one_seed(x, y, a.data, a.model, seed, getattr(torch, a.dtype)))
        r, lam = rows[-1], HEADLINE_DAMPING[a.model]
        print(f"seed {seed}: tau={r['sgd_tau']:.3f} jaccard={r['sgd_jaccard']:.3f} "
              f"forward_tau={r['forward_tau']:.3f} forward_jaccard={r['forward_jaccard']:.3f} "
              f"forward-loss_tau={r['forward-loss_tau']:.3f} "
              f"forward-loss_jaccard={r['forward-loss_jaccard']:.3f} "
              f"refined_tau={r['refined_tau']:.3f} refined_jaccard={r['refined_jaccard']:.3f} "
              f"kl_tau={r[f'kl@{lam:g}_tau']:.3f} tracin_tau={r['tracin_tau']:.3f}", flush=True)
    frame = pd.DataFrame(rows)
    name = f"lie-{a.data}-{a.model}-{a.dtype}"
    out.mkdir(parents=True, exist_ok=True)
    write_per_seed(out, name, frame, a.model)
    row_report(out, frame, a.data, a.model, a.dtype, common.command(),
               f"{a.seeds} seeds, {time.perf_counter() - began:.0f} s on "
               f"{torch.get_num_threads()} thread(s).")
    combined_report(out)
    frame = with_headline(frame, a.model)
    result = {k: float(frame[f"{m}_{s}"].mean()) for k, m, s in
              [("tau", "sgd", "tau"), ("jaccard", "sgd", "jaccard"), ("kl_tau", "kl", "tau"),
               ("kl_jaccard", "kl", "jaccard"), ("tracin_tau", "tracin", "tau"),
               ("tracin_jaccard", "tracin", "jaccard")]}
    result.update({f"{m}_{s}": float(frame[f"{m}_{s}"].mean()) for m in FORWARD_LABELS
                   for s in ("tau", "jaccard")})
    result.update({f"{m}_ratio": float((frame[f"{m}_seconds"] / frame["sgd_seconds"]).mean())
                   for m in FORWARD_LABELS})
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
