"""How cost grows: time and peak memory of training, exact scoring (Algorithm 2 over every epoch)
and a cleaning round (retrain without the 50 most harmful images plus the default random controls,
every epoch), against the number of images and against the number of parameters.

    python benchmarks/scale.py                  # the real MNIST test set: the first 1k, 2k, 5k, 10k
                                                # images × 2 and 4 epochs; 7 models on 2k images
    python benchmarks/scale.py --device cuda    # the same on a GPU (fails when there is none)
    python benchmarks/scale.py --quick          # digits subsets, 2 models (CI)
    python benchmarks/scale.py --report-only    # rewrite scale.md and scale.png from scale.csv

Every configuration runs in a fresh process (imports, data, model), which times its phases side by
side (train, score, train, score, …; medians) and reports the peak resident memory of each phase
(VmHWM, reset between phases through /proc/self/clear_refs; on CUDA also torch's peak GPU memory).
The time per size is fitted by least squares against (training images × epochs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import (RESULTS, ROOT, command, data_name, device_or_exit, image_data, markdown,
                    memory_mb, register_wide_presets, reset_peak_memory, setup, summary, sync,
                    write_report)

import numpy as np
import pandas as pd
import torch

from influence import cleaning
from influence.config import RunConfig, workers
from influence.runs import Run

MODELS = ["logreg", "dnn", "cnn-small", "cnn", "cnn-cifar", "cnn-wide", "cnn-wider"]
HARMFUL, CONTROLS = 50, cleaning.CONTROLS  # the cleaning round: images removed, random controls
HOUR = 3600.0


def options(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder of MNIST IDX files")
    ap.add_argument("--sizes", default="1000,2000,5000,10000", help="images (first n of the set)")
    ap.add_argument("--epochs", default="2,4", help="epochs of the size series")
    ap.add_argument("--model", default="cnn", help="the model of the size series")
    ap.add_argument("--models", default=",".join(MODELS), help="the parameter-count series")
    ap.add_argument("--models-size", type=int, default=2000, help="images for the model series")
    ap.add_argument("--repeats", type=int, default=2, help="alternating train/score timings")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="digits: 300 and 600 images, 2 models")
    ap.add_argument("--out", default=str(RESULTS / "scale.md"))
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report and chart from the .csv next to --out, no measuring")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.epochs, a.models_size, a.repeats = "300,600", "1,2", 300, 1
        a.models = "logreg,cnn-small"
        a.model = "cnn-small"
    return a


def phase(fn, device) -> tuple[float, float, float]:
    """Seconds, peak RSS (MB) and peak GPU memory (MB; NaN on the CPU) of fn() alone."""
    reset_peak_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - began
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else np.nan
    return seconds, memory_mb("VmHWM"), gpu


def warm_up(run: Run, clean: bool) -> None:
    """Every phase once on a few images, untimed: the first call of each torch.func transform
    in a process costs seconds, which a long-running app pays once."""
    run.train()
    run.influence()
    if clean:
        cleaning.clean(run, run.train_ids[:2], "all", 2)


def measure(a, n: int, epochs: int, model: str, clean: bool) -> dict:
    """One configuration, in this process."""
    setup(a.threads)
    device = device_or_exit(a.device)
    register_wide_presets()
    data = image_data(a.quick, a.data_dir).subset(range(n))
    config = RunConfig(dataset=f"scale-{n}", model=model, epochs=epochs, batch_size=64,
                       device=a.device, seed=0)
    warm_up(Run(replace(config, epochs=1), data.subset(range(min(n, 200)))), clean)
    run = Run(config, data)
    row = {"images": n, "train images": len(run.train_ids), "epochs": epochs, "model": model,
           "parameters": sum(p.numel() for p in run.model.parameters()),
           "steps": run.schedule.steps, "loaded RSS MB": memory_mb("VmRSS"),
           "peak resettable": reset_peak_memory()}
    times = {"train": [], "score": []}
    for _ in range(a.repeats):  # side by side: train, score, train, score, …
        for name, fn in (("train", run.train), ("score", run.influence)):
            seconds, rss, gpu = phase(fn, device)
            times[name].append(seconds)
            row[f"{name} peak RSS MB"] = max(row.get(f"{name} peak RSS MB", 0), rss)
            row[f"{name} peak GPU MB"] = gpu
    for name, values in times.items():
        row[f"{name} s"] = statistics.median(values)
    if clean:
        harmful = [run.train_ids[j] for j in np.argsort(run.influence(), kind="stable")[:HARMFUL]]
        seconds, rss, gpu = phase(lambda: cleaning.clean(run, harmful, "all", CONTROLS), device)
        row.update({"clean s": seconds, "clean peak RSS MB": rss, "clean peak GPU MB": gpu})
    return row


def spawn(a, argv: list[str], **config) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--child", json.dumps(config)],
                          cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"error: {config} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{config}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()
                                    if k.endswith(" s")), file=sys.stderr, flush=True)
    return row


def fit(frame: pd.DataFrame, column: str) -> dict:
    """Least squares of seconds against training images × epochs (scipy.stats.linregress)."""
    from scipy.stats import linregress

    part = frame.dropna(subset=[column])
    x = part["train images"] * part["epochs"]
    r = linregress(x, part[column])
    return {"phase": column.removesuffix(" s"), "points": len(part),
            "ms per image-epoch (slope)": 1000 * r.slope, "intercept s": r.intercept,
            "R²": r.rvalue ** 2}


def hour_size(fits: pd.DataFrame, epochs: int = 20, clean_epochs: int = 20,
              train_share: float = 0.6) -> tuple[int, int]:
    """The largest training set (and whole data set, of which `train_share` is trained on) whose
    train + exact score + cleaning round takes at most an hour at `epochs` epochs, the cleaning
    retraining `clean_epochs` of them, from the fitted lines:
    Σ intercepts + n · (epochs · (train + score slopes) + clean_epochs · clean slope) = 1 hour."""
    slope = fits.set_index("phase")["ms per image-epoch (slope)"] / 1000
    per_image = epochs * (slope["train"] + slope["score"]) + clean_epochs * slope["clean"]
    n_train = (HOUR - fits["intercept s"].sum()) / per_image
    return int(n_train), int(n_train / train_share)


def chart(path: Path, sizes: pd.DataFrame, models: pd.DataFrame, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    sizes = sizes.assign(x=sizes["train images"] * sizes["epochs"]).sort_values("x")
    x = sizes["x"]
    phases = [p for p in ("train", "score", "clean") if f"{p} s" in sizes]
    for p, colour in zip(phases, ("C0", "C1", "C2")):
        part = sizes.dropna(subset=[f"{p} s"])
        px = part["train images"] * part["epochs"]
        axes[0].plot(px, part[f"{p} s"], "o", color=colour, label=p)
        slope, intercept = np.polyfit(px, part[f"{p} s"], 1)
        line = np.linspace(0, px.max(), 50)
        axes[0].plot(line, intercept + slope * line, "-", color=colour, alpha=0.6)
        axes[1].plot(px, part[f"{p} peak RSS MB"], "o-", color=colour, label=f"{p} peak")
    axes[1].plot(x, sizes["loaded RSS MB"], "k--", label="loaded (imports, data, warm-up)")
    axes[0].set(xlabel="training images × epochs", ylabel="seconds", title="time (lines: fits)")
    axes[1].set(xlabel="training images × epochs", ylabel="peak RSS (MB)", ylim=(0, None),
                title="peak memory per phase")
    for p, colour in zip(("train", "score"), ("C0", "C1")):
        axes[2].plot(models["parameters"], models[f"{p} s"], "o", color=colour, label=f"{p} s")
    for _, r in models.iterrows():
        axes[2].annotate(r["model"], (r["parameters"], r["score s"]), fontsize=7,
                         xytext=(3, 3), textcoords="offset points")
    axes[2].set(xscale="log", yscale="log", xlabel="parameters", ylabel="seconds",
                title=f"time against parameters ({models['train images'].iloc[0]:,} training "
                      f"images, {models['epochs'].iloc[0]} epochs)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    a = options(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if a.child:
        print(json.dumps(measure(a, **json.loads(a.child))))
        return {}
    out = Path(a.out)
    if not a.report_only:
        measure_all(a, argv, out.with_suffix(".csv"))
    return report(out)


def measure_all(a, argv: list[str], csv: Path) -> None:
    """Every configuration, each in a fresh process; the rows go to `csv` with the command and
    the machine, from which report() writes the tables and the chart."""
    device = device_or_exit(a.device)
    load_before = os.getloadavg()[0]
    setup(a.threads)  # as in the children, so that workers() below is theirs
    sizes = [int(s) for s in a.sizes.split(",")]
    epochs = [int(e) for e in a.epochs.split(",")]
    size_rows = [spawn(a, argv, n=n, epochs=e, model=a.model, clean=True)
                 for n in sizes for e in epochs]
    model_rows = [spawn(a, argv, n=a.models_size, epochs=epochs[0], model=m, clean=False)
                  for m in a.models.split(",")]
    full = image_data(a.quick, a.data_dir)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    csv.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([pd.DataFrame(size_rows).assign(series="size"),
               pd.DataFrame(model_rows).assign(series="model")]).assign(
        command=command(), data=data_name(full, a.quick, a.data_dir),
        machine=f"{os.cpu_count()} CPU cores (load average {load_before:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after), torch {torch.__version__}, {a.threads} torch "
                f"thread(s) per worker, {workers(device)} worker(s), device {device}{gpu}",
        repeats=a.repeats).to_csv(csv, index=False)


def report(out: Path) -> dict:
    """scale.md and scale.png from scale.csv."""
    rows = pd.read_csv(out.with_suffix(".csv"))
    by_size = rows[rows.series == "size"].reset_index(drop=True)
    by_model = rows[rows.series == "model"].reset_index(drop=True)
    for frame in (by_size, by_model):
        frame["score ÷ train"] = frame["score s"] / frame["train s"]
    by_size["clean ÷ train"] = by_size["clean s"] / by_size["train s"]
    fits = pd.DataFrame([fit(by_size, f"{p} s") for p in ("train", "score", "clean")])
    chart(out.with_suffix(".png"), by_size, by_model,
          f"Scale: {rows.data[0]}, {rows.machine[0]}")
    write(out, rows, by_size, by_model, fits)
    n_train, n_data = hour_size(fits)
    slope, r2 = fits["ms per image-epoch (slope)"], fits["R²"]
    result = {"train_slope_ms": slope[0], "train_r2": r2[0], "score_slope_ms": slope[1],
              "score_r2": r2[1], "clean_slope_ms": slope[2], "clean_r2": r2[2],
              "hour_train_images": n_train, "hour_images": n_data,
              "score_over_train": float(by_size["score ÷ train"].median())}
    summary(**result)
    return result


def whole(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts as whole numbers with thousands separators (not 1e+04)."""
    frame = frame.copy()
    for column in ("images", "train images", "epochs", "steps", "parameters"):
        if column in frame:
            frame[column] = frame[column].map(lambda v: f"{int(v):,}")
    return frame


def write(out: Path, rows, by_size, by_model, fits) -> None:
    phases = ("train", "score", "clean")
    size_cols = ["images", "train images", "epochs", "steps", *(f"{p} s" for p in phases),
                 "score ÷ train", "clean ÷ train", "loaded RSS MB",
                 *(f"{p} peak RSS MB" for p in phases)]
    model_cols = ["model", "parameters", "train s", "score s", "score ÷ train", "loaded RSS MB",
                  "train peak RSS MB", "score peak RSS MB"]
    if by_size["train peak GPU MB"].notna().any():
        size_cols += [f"{p} peak GPU MB" for p in phases]
        model_cols += ["train peak GPU MB", "score peak GPU MB"]
    slopes = fits.set_index("phase")["ms per image-epoch (slope)"]
    intercepts = fits.set_index("phase")["intercept s"]
    n_train, n_data = hour_size(fits)
    last_train, last_data = hour_size(fits, clean_epochs=1)
    per_epoch = np.ceil(by_size["steps"] / by_size["epochs"])
    replay_mb = (per_epoch * by_size["parameters"] * 4 / 2 ** 20).max()  # every θ kept
    above = by_size["score peak RSS MB"] - by_size["loaded RSS MB"]
    model = by_size["model"][0]
    sections = [
        f"Machine: {rows.machine[0]}. Data: the first n images of {rows.data[0]}; "
        f"train/validation/test = 60/20/20 %, batch 64, model `{model}` for the size "
        f"series, the preset learning rate, seed 0. Times: medians of {rows.repeats[0]} "
        "alternating train/score runs in one process per row, after each phase once untimed on "
        "200 images (the first call of a torch.func transform costs seconds); the cleaning round "
        f"once (the {HARMFUL} lowest exact scores removed, {CONTROLS} random controls of "
        f"{HARMFUL}, every epoch retrained). Peaks: each phase's own peak resident memory; "
        "loaded RSS: after the imports, the data and that warm-up. "
        f"The chart: ![scale]({out.with_suffix('.png').name})",
        "## Against the number of images",
        markdown(whole(by_size[size_cols])),
        "## Time is linear in training images × epochs",
        "Least squares of each phase's seconds against (training images × epochs), over the "
        f"{len(by_size)} rows above (scipy.stats.linregress):",
        markdown(fits),
        "## Memory",
        f"Scoring's peak lies {above.min():.0f} to {above.max():.0f} MB above the loaded RSS "
        f"over these sizes. The replay's part of it is at most {replay_mb:.1f} MB (every θ of an "
        "epoch when they fit in the memory budget, as here; else ⌈T_k/⌈√T_k⌉⌉ + ⌈√T_k⌉ θ); the "
        "rest is the query's gradient, taken over the validation images in chunks that fit the "
        "budget (at most 1,024 images at a time: query-memory.md), and the Hessian-vector "
        "pass of one batch. Training's and cleaning's peaks are bounded by the batch and by "
        "evaluation in chunks of 1,024 images.",
        "## Against the number of parameters",
        f"{int(by_model['train images'][0]):,} training images, {int(by_model['epochs'][0])} "
        "epochs; the presets plus two wider CNNs built for this benchmark (`cnn-wide`: 16/32 "
        "channels and 512 hidden units; `cnn-wider`: 32/64 channels and 1024 hidden units).",
        markdown(whole(by_model[model_cols])),
        "## Cleaning in an hour",
        f"Train + exact score + one cleaning round (retraining every epoch, {CONTROLS} random "
        f"controls) of `{model}` at the app's default of 20 epochs (for more than about 1,900 "
        "training images), from the fitted lines: Σ intercepts + n_train × 20 × Σ slopes = "
        f"3,600 s, with Σ slopes = {slopes.sum():.3g} ms (train {slopes['train']:.3g} + score "
        f"{slopes['score']:.3g} + clean {slopes['clean']:.3g}) and Σ intercepts = "
        f"{intercepts.sum():.3g} s: n_train ≈ {n_train:,} training images, a data set of about "
        f"{n_data:,} images of this size at a 60/20/20 split. Retraining only the last epoch in "
        f"the cleaning round (the clean slope counted for 1 epoch instead of 20): n_train ≈ "
        f"{last_train:,}, about {last_data:,} images. Both extrapolate the lines beyond the "
        "largest size measured."]
    write_report(out.parent, out.stem, "How cost grows with images and parameters",
                 rows.command[0], sections)


if __name__ == "__main__":
    main()
