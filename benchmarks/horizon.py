"""Why the exact retrace degrades over many epochs: the size of u along the retrace, how much of
its growth comes from steps with negative curvature along u, and the share of the scores that
each epoch contributes (influence/horizon.py).

Per split: the run of benchmarks/groups.py (digits with the app's defaults; MNIST CNN, 6 epochs),
u = ∇θ of the mean validation loss at θ[T], retraced backwards over every epoch with the exact
Hessian (Algorithm 2), with damping λ (u ← (1 − λη_t)(I − η_t H[t]) u) and with Gauss-Newton
curvature. Per retraced step: ‖u‖, the curvature along u (⟨u, Hu⟩/‖u‖²) and the growth of ‖u‖;
per epoch: the share of Σ_j |score_j| it adds.

    python benchmarks/horizon.py --splits 5 --mnist-splits 2 --resume
    python benchmarks/horizon.py --quick      # digits, 1 split, 10 epochs
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from influence.horizon import epoch_shares, growth_summary, retrace_by_epoch
from influence.sgd_influence import loss_gradient

EPOCHS = {"digits": None, "mnist": 6}  # as benchmarks/groups.py
TITLE = {"digits": "digits (app defaults)", "mnist": "MNIST CNN"}
DAMPING = 0.03


def variants(damping: float) -> dict[str, dict]:
    return {"exact (Hessian)": {}, f"damped, λ = {damping:g}": {"damping": damping},
            "Gauss-Newton": {"curvature": "gauss-newton"}}


def one_split(data, name: str, split: int, a) -> tuple[list[dict], list[dict], list[dict]]:
    run = common.train_run(data, split, a.epochs or EPOCHS[name], name)
    u = loss_gradient(run.val_loss_fn, run.theta)
    summary, steps, shares = [], [], []
    for label, options in variants(a.damping).items():
        began = time.perf_counter()
        contrib, trace = retrace_by_epoch(run.objective, run.schedule, run.checkpoints,
                                          run.keep_at, u, range(run.schedule.epochs),
                                          labels_at=run.labels_at, **options)
        seconds = time.perf_counter() - began
        share = epoch_shares(contrib).cpu().numpy()
        K = len(share)
        summary.append({"data": name, "split": split, "variant": label, "epochs": K,
                        "steps": run.schedule.steps, "lr": run.config.lr, **growth_summary(trace),
                        "first_half_share": float(share[:K // 2].sum()),
                        "last_epoch_share": float(share[-1]), "seconds": seconds})
        steps += trace.assign(data=name, split=split, variant=label).to_dict("records")
        shares += [{"data": name, "split": split, "variant": label, "epoch": k, "share": s}
                   for k, s in enumerate(share)]
    print(f"{name} split {split}: growth " + " · ".join(
        f"{r['variant']} ×{r['growth']:.3g}" for r in summary), flush=True)
    return summary, steps, shares


def plot(png: Path, steps: pd.DataFrame, shares: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(steps.data))
    fig, axes = plt.subplots(len(names), 3, figsize=(15, 3.8 * len(names)), dpi=100,
                             squeeze=False)
    for row, name in zip(axes, names):
        part = steps[(steps.data == name) & (steps.split == steps.split.min())]
        for label, s in part.groupby("variant", sort=False):
            row[0].plot(s.t, s.norm / s.norm.iloc[0], label=label, linewidth=1)
        row[0].set(yscale="log", xlabel="step t (retraced from right to left)",
                   ylabel="‖u_t‖ / ‖u_T‖", title=f"{TITLE[name]}, split {part.split.min()}: "
                                                  "size of u along the retrace")
        row[0].invert_xaxis()
        exact = part[part.variant == part.variant.iloc[0]]
        row[1].scatter(exact.t, exact.eta * exact.rayleigh, s=3,
                       c=np.where(exact.rayleigh < 0, "tab:red", "tab:blue"))
        row[1].axhline(0, color="grey", linewidth=0.6)
        row[1].set(xlabel="step t", ylabel="η_t ⟨u, H u⟩ / ‖u‖²",
                   title="curvature along u (exact retrace; red: negative)")
        row[1].invert_xaxis()
        mean = shares[shares.data == name].groupby(["variant", "epoch"], sort=False
                                                   ).share.mean().reset_index()
        for label, s in mean.groupby("variant", sort=False):
            row[2].plot(s.epoch + 1, s.share, marker=".", label=label)
        row[2].set(xlabel="epoch", ylabel="share of Σ|score|",
                   title="share of the scores from each epoch (mean over splits)")
        for ax in (row[0], row[2]):
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def reading(summary: pd.DataFrame) -> str:
    """The table in words, from its own figures."""
    lines = []
    for name, part in summary.groupby("data", sort=False):
        exact = part[part.variant == "exact (Hessian)"]
        gn = part[part.variant == "Gauss-Newton"]
        lines.append(
            f"- {TITLE[name]}: the exact retrace ends with ‖u‖ {exact.growth.median():.3g}× the "
            f"query's (median), {exact.rebound.median():.3g}× its smallest value along the way; "
            f"{exact.growth_share_negative.mean():.1%} of the log-growth comes from the steps "
            f"with negative curvature along u, and {exact.growth_share_first_quarter.mean():.1%} "
            f"from the first quarter of the training steps (retraced last). The "
            f"first half of the epochs gives {exact.first_half_share.mean():.1%} of Σ|score|, "
            f"the last epoch {exact.last_epoch_share.mean():.1%}. With Gauss-Newton curvature u "
            f"never grows (from its smallest: {gn.rebound.max():.3g}×).")
    return "Reading:\n\n" + "\n".join(lines)


def report(summary: pd.DataFrame, steps: pd.DataFrame, shares: pd.DataFrame, a,
           out: Path) -> dict:
    png = out / f"{a.name_out}.png"
    plot(png, steps, shares)
    again = pd.DataFrame([{"data": d, "split": s, "variant": v, **growth_summary(part)}
                          for (d, s, v), part in steps.groupby(["data", "split", "variant"],
                                                               sort=False)])
    summary = summary.drop(columns=[c for c in again.columns[3:] if c in summary]).merge(
        again, on=["data", "split", "variant"])  # from the steps, the one record
    rows = []
    for (name, variant), part in summary.groupby(["data", "variant"], sort=False):
        rows.append({"data": TITLE[name], "retrace": variant, "splits": len(part),
                     "growth of ‖u‖ (T → 1)": f"{part.growth.median():.3g} "
                     f"({part.growth.min():.3g}–{part.growth.max():.3g})",
                     "growth from its smallest ‖u‖": f"{part.rebound.median():.3g} "
                     f"({part.rebound.min():.3g}–{part.rebound.max():.3g})",
                     "steps with ⟨u, Hu⟩ < 0": common.mean_std(part.negative_steps),
                     "log-growth from those steps": common.mean_std(part.growth_share_negative),
                     "score share, first half of the epochs": common.mean_std(
                         part.first_half_share),
                     "score share, last epoch": common.mean_std(part.last_epoch_share),
                     "seconds": f"{part.seconds.mean():.1f}"})
    setup = []
    for name, part in summary.groupby("data", sort=False):
        t = part.iloc[0]
        setup.append(f"- {TITLE[name]}: {int(t.epochs)} epochs ({int(t.steps)} steps), "
                     f"η = {t.lr:g}, {part.split.nunique()} splits (the runs of "
                     "benchmarks/groups.py).")
    sections = [
        "Setup:\n\n" + "\n".join(setup),
        "u starts as ∇θ of the mean validation loss at θ[T] and is carried backwards over every "
        "epoch: exact (Algorithm 2, u ← (I − η_t H[t]) u), damped (u ← (1 − λη_t)(I − η_t H[t]) "
        "u) and with Gauss-Newton curvature (G[t], positive semi-definite, in place of H[t]). "
        "Growth: ‖u‖ after the last retraced step (t = 1) over ‖u_T‖, median (range) over "
        "splits; from its smallest: ‖u‖ at t = 1 over the smallest ‖u‖ along the retrace. A step grows ‖u‖² by −2η⟨u, Hu⟩ (positive only where the curvature along u is "
        "negative) plus η²‖Hu‖² (overshoot). *Log-growth from those steps*: of the summed "
        "log(‖u_new‖/‖u_old‖) of the steps where u grew, the share from the steps with ⟨u, Hu⟩ "
        "< 0. *Score share*: of Σ over epochs and images of |the score an epoch adds|, the share of "
        "the first half of the epochs and of the last epoch (mean ± std over splits).",
        common.markdown(pd.DataFrame(rows)),
        reading(summary),
        f"![u along the retrace]({png.name})",
        f"Per step and split: `{a.name_out}-steps.csv`; per run: `{a.name_out}.csv`; per "
        f"epoch: `{a.name_out}-shares.csv`."]
    common.write_report(out, a.name_out, "The retrace over many epochs: size of u, curvature, "
                        "share of each epoch", common.command(), sections)
    exact = summary[summary.variant == "exact (Hessian)"]
    return {"growth": float(exact.growth.median()),
            "growth_share_negative": float(exact.growth_share_negative.mean()),
            "first_half_share": float(exact.first_half_share.mean())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--mnist-splits", type=int, default=None,
                        help="splits on MNIST (default: --splits; 0: digits only)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--damping", type=float, default=DAMPING)
    common.add_resume_option(parser)
    common.add_data_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.mnist_splits, a.epochs = 1, 0, a.epochs or 10
    common.setup(a.threads)
    splits = {"digits": a.splits, "mnist": a.splits if a.mnist_splits is None else a.mnist_splits}
    names = [n for n in ("digits", "mnist") if splits[n]]
    a.name_out = "horizon-quick" if a.quick else "horizon"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{a.name_out}{part}.csv" for part in ("", "-steps", "-shares")]
    data = {name: common.image_data(name == "digits", a.data_dir) for name in names}
    jobs = [(name, split) for name in names for split in range(splits[name])]
    frames = common.kept_tables(files, a.resume, jobs, lambda name, split: one_split(
        data[name], name, split, a), last=0)
    result = report(*frames, a, out)
    common.summary(**result)
    return result


if __name__ == "__main__":
    main()
