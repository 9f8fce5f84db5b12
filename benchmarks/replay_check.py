"""How far a replayed θ lands from the recorded one: train, then replay every epoch from its
checkpoint (as scoring does) and compare, on the CPU or on CUDA, with and without torch's
deterministic algorithms.

    python benchmarks/replay_check.py                  # CPU: expect 0 everywhere (bit-identical)
    python benchmarks/replay_check.py --device cuda    # GPU (fails with a message without one)
    python benchmarks/replay_check.py --quick          # 640 images, 2 epochs (CI)

For each setting: the largest |θ| difference between the replayed end of each epoch and the
recorded checkpoint of the next, over all epochs and parameters; the largest difference between
two replays of the same epoch at every step; and the largest difference between two exact scorings
(Algorithm 2). Also the largest difference of the trained θ[T] from the same training on the CPU.
Data: random MNIST-size images (28×28×1, 10 labels), the paper's MNIST CNN, batch 64.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from common import ROOT, command, device_or_exit, setup, summary, sync, write_report

import pandas as pd
import torch

from influence import models
from influence.sgd import (Objective, SGDConfig, initial_params, make_schedule, per_sample_loss,
                           replay_epoch, run_sgd, sgd_step)
from influence.sgd_influence import loss_gradient, retrace


def largest(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double().to(a[k].device)).abs().max()) for k in a)


def problem(n: int, epochs: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 256, (n + 500, 1, 28, 28), generator=gen, dtype=torch.uint8) / 255)
    y = torch.randint(0, 10, (n + 500,), generator=gen)
    model = models.build("cnn", (28, 28, 1), 10, seed=0).to(device)
    obj = Objective(model, x[:n].to(device), y[:n].to(device))
    x_val, y_val = x[n:].to(device), y[n:].to(device)
    schedule = make_schedule(n, SGDConfig(epochs, 64, 0.05, seed=0))
    query = lambda theta: per_sample_loss(obj.outputs(theta, x_val), y_val).mean()  # noqa: E731
    return model, obj, schedule, query


def check(n: int, epochs: int, device: torch.device, deterministic: bool) -> dict:
    """Train, replay every epoch twice, score twice; the largest differences."""
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    model, obj, schedule, query = problem(n, epochs, device)
    everyone = torch.ones(n, dtype=torch.bool, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        began = time.perf_counter()
        checkpoints = run_sgd(obj, schedule, initial_params(model, device, torch.float32),
                              lambda k: everyone)
        sync(device)
        train_s = time.perf_counter() - began
        end_gap = replays_gap = 0.0
        for k in range(epochs):
            first, second = (replay_epoch(obj, schedule, checkpoints[k], k, everyone)
                             for _ in range(2))
            for a, b in zip(first, second):  # every θ[t] of the epoch, forwards
                replays_gap = max(replays_gap, largest(a, b))
            t = schedule.epoch_steps(k)[-1]
            idx = torch.as_tensor(schedule.batch(t), device=device)
            end = sgd_step(obj, first[-1], idx, float(schedule.lr[t]), everyone)[0]
            end_gap = max(end_gap, largest(end, checkpoints[k + 1]))
        u = loss_gradient(query, checkpoints[epochs])
        began = time.perf_counter()
        scores = [retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(epochs))
                  for _ in range(2)]
        sync(device)
        score_s = (time.perf_counter() - began) / 2
    notes = sorted({str(w.message).split("\n")[0][:160] for w in caught
                    if "determinis" in str(w.message)})
    return {"device": str(device), "deterministic algorithms": deterministic,
            "replayed end vs recorded checkpoint": end_gap,
            "two replays, every θ[t]": replays_gap,
            "two exact scorings": float((scores[0] - scores[1]).abs().max()),
            "largest |score|": float(scores[0].abs().max()),
            "train s": train_s, "score s": score_s, "warnings": "; ".join(notes) or "none",
            "_theta": {k: v.cpu() for k, v in checkpoints[epochs].items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay-check.md"))
    ap.add_argument("--quick", action="store_true", help="640 images, 2 epochs (for CI)")
    a = ap.parse_args(argv)
    if a.quick:
        a.images, a.epochs = 640, 2
    # cuBLAS needs a fixed workspace for deterministic results (set before its first use)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = device_or_exit(a.device)
    setup(a.threads)
    rows = [check(a.images, a.epochs, device, deterministic) for deterministic in (True, False)]
    cpu = rows[0] if device.type == "cpu" else check(a.images, a.epochs, torch.device("cpu"),
                                                      True)
    for r in rows:
        r["θ[T] vs the CPU's"] = largest(r["_theta"], cpu["_theta"])
    n_params = sum(p.numel() for p in rows[0]["_theta"].values())
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "_theta"} for r in rows])
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    cudnn = (f", cuDNN deterministic = {torch.backends.cudnn.deterministic}, benchmark = "
             f"{torch.backends.cudnn.benchmark}" if device.type == "cuda" else "")
    sections = [
        f"{a.images:,} random 28×28×1 images, `cnn` ({n_params:,} parameters), batch 64, lr "
        f"0.05, {a.epochs} epochs, float32; device {device}{gpu}, "
        f"torch {torch.__version__}{cudnn}, CUBLAS_WORKSPACE_CONFIG="
        f"{os.environ['CUBLAS_WORKSPACE_CONFIG']}. Largest absolute differences (0 = "
        "bit-identical); `deterministic algorithms`: torch.use_deterministic_algorithms "
        "(warn_only: an operation without a deterministic version warns, listed under warnings).",
        frame.to_markdown(index=False, floatfmt=".3g")]
    write_report(Path(a.out).parent, Path(a.out).stem, "Replayed against recorded θ", command(),
                 sections)
    result = {"replay_gap_deterministic": rows[0]["replayed end vs recorded checkpoint"],
              "replay_gap_default": rows[1]["replayed end vs recorded checkpoint"],
              "theta_vs_cpu": rows[0]["θ[T] vs the CPU's"]}
    summary(**result)
    return result


if __name__ == "__main__":
    main()
