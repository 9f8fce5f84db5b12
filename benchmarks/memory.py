"""Peak memory and time of exact scoring (Algorithm 2) with the checkpointed replay, which keeps
every ⌈√T_k⌉-th θ of an epoch and recomputes the steps between, against keeping every θ[t] of the
epoch (what replay_epoch did before: steps-per-epoch × |θ|).

    python benchmarks/memory.py      # 50,000 random 32×32×3 images, a 1.06M-parameter wider CNN,
                                     # one epoch at batch 64 (782 steps)
    python benchmarks/memory.py --quick  # 4,000 images (CI)

Random pixels and labels: timing and memory need no real images. Every measurement runs in a
fresh process (train, then score keeping every θ, then score with checkpoints; `--repeats`
alternates the two scorings), and each reports its own peak resident memory (VmHWM; on CUDA also
torch's peak of allocated GPU memory). "Every θ" is the same EpochReplay with every = 1, which
holds exactly the list of θ[t] the former replay_epoch returned.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (ROOT, command, device_or_exit, memory_mb, reset_peak_memory, setup, summary,
                    sync, wide_cnn, write_report)

import numpy as np
import torch

from influence import models
from influence.sgd import (Objective, SGDConfig, batch_weights, checkpoint_every,
                           initial_params, make_schedule, per_sample_loss, replayed_steps,
                           run_sgd, sgd_step)
from influence.sgd_influence import hvp_and_dot_grads, loss_gradient, retrace

VARIANTS = {"every θ (before)": 1, "every ⌈√T_k⌉-th θ (after)": None}  # name → every


def options(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50_000, help="training images")
    ap.add_argument("--shape", default="32x32x3", help="H×W×C of the random images")
    ap.add_argument("--model", default="cnn-wide",
                    help="cnn-wide (16/32 channels, 512 hidden) or a preset name")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="alternating scorings of each kind")
    ap.add_argument("--only-after", action="store_true", help="skip keeping every θ (timing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.md"))
    ap.add_argument("--quick", action="store_true", help="4,000 images (63 steps; for CI)")
    ap.add_argument("--child", choices=("train", "score"), help=argparse.SUPPRESS)
    ap.add_argument("--every", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.images = 4000
    return a


def problem(a):
    """The random data (plus 1,000 validation images for the query), model and schedule."""
    device = device_or_exit(a.device)
    h, w, c = (int(v) for v in a.shape.split("x"))
    gen = torch.Generator().manual_seed(0)

    def images(n):  # filled in chunks: no uint8 and float copy of everything at once
        x = torch.empty(n, c, h, w, device=device)
        for i in range(0, n, 5000):
            m = min(5000, n - i)
            x[i:i + m] = torch.randint(0, 256, (m, c, h, w), generator=gen,
                                       dtype=torch.uint8).to(device) / 255
        return x, torch.randint(0, 10, (n,), generator=gen).to(device)

    x, y = images(a.images)
    x_val, y_val = images(1000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (wide_cnn(16, 512)(h, w, c, 10) if a.model == "cnn-wide"
                 else models.PRESETS[a.model].build(h, w, c, 10)).to(device)
    lr = models.PRESETS[a.model].lr if a.model in models.PRESETS else 0.05
    schedule = make_schedule(a.images, SGDConfig(a.epochs, a.batch_size, lr, seed=0))
    obj = Objective(model, x, y)
    val_loss = lambda theta: per_sample_loss(obj.outputs(theta, x_val), y_val).mean()  # noqa: E731
    return device, model, obj, schedule, val_loss


def warm_up(obj, schedule, theta, keep) -> None:
    """One SGD step and one Hessian-vector pass, untimed: the first call of each torch.func
    transform in a process costs seconds."""
    idx = torch.as_tensor(schedule.batch(0), device=obj.x.device)
    sgd_step(obj, theta, idx, 0.0, keep)
    hvp_and_dot_grads(obj, theta, idx, batch_weights(keep, idx, obj.x.dtype), theta)


class Steps:
    """on_step: counts the steps and prints the progress to stderr every tenth of `total` (a
    measurement stopped by a timeout still tells its rate)."""

    def __init__(self, phase: str, total: int):
        self.phase, self.total, self.count, self.began = phase, total, 0, time.perf_counter()

    def __call__(self, _step) -> None:
        self.count += 1
        if self.count % max(self.total // 10, 1) == 0:
            print(f"{self.phase}: {self.count}/{self.total} steps in "
                  f"{time.perf_counter() - self.began:.1f} s", file=sys.stderr, flush=True)


def child(a) -> dict:
    """One measurement in this process: train (saving the checkpoints to a.state) or score."""
    setup(a.threads)
    device, model, obj, schedule, val_loss = problem(a)
    everyone = torch.ones(a.images, dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_up(obj, schedule, initial_params(model, device, torch.float32), everyone)
    before_mb = memory_mb("VmRSS")
    if a.child == "train":
        began = time.perf_counter()
        checkpoints = run_sgd(obj, schedule, initial_params(model, device, torch.float32),
                              lambda k: everyone, on_step=Steps("train", schedule.steps))
        sync(device)
        seconds = time.perf_counter() - began
        torch.save(checkpoints, a.state)
        replayed = 0
    else:
        checkpoints = torch.load(a.state, map_location=device)
        u = loss_gradient(val_loss, checkpoints[schedule.epochs])
        before_mb = memory_mb("VmRSS")
        if not reset_peak_memory():  # the peak from here on: the scoring's own
            raise SystemExit("error: this kernel does not let a process reset its peak memory")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # how many θ the retrace keeps: 1 = every θ (as before), else every ⌈√T_k⌉-th
        every = a.every or checkpoint_every(schedule.steps_per_epoch)
        steps = Steps(f"score (every {every})", schedule.epochs * (
            replayed_steps(schedule.steps_per_epoch, every) + schedule.steps_per_epoch))
        began = time.perf_counter()
        retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(schedule.epochs),
                steps, every=a.every or None)
        sync(device)
        seconds = time.perf_counter() - began
        replayed = steps.count - schedule.steps  # on_step: each replayed and each retraced step
    return {"seconds": seconds, "peak_mb": memory_mb("VmHWM"), "before_mb": before_mb,
            "replayed": replayed,
            "gpu_peak_mb": (torch.cuda.max_memory_allocated(device) / 2 ** 20
                            if device.type == "cuda" else float("nan"))}


def spawn(argv: list[str], *extra: str) -> dict:
    """One measurement in a fresh process (its VmHWM is its own)."""
    done = subprocess.run([sys.executable, __file__, *argv, *extra], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:  # its progress and traceback went to stderr
        raise SystemExit(f"error: measurement {' '.join(extra)} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    a = options(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if a.child:
        print(json.dumps(child(a)))
        return {}
    device_or_exit(a.device)  # fail before any work when the device is missing
    _, model, _, _, _ = problem(argparse.Namespace(**{**vars(a), "images": a.batch_size}))
    n_params = sum(p.numel() for p in model.parameters())
    schedule = make_schedule(a.images, SGDConfig(a.epochs, a.batch_size))
    per_epoch = schedule.steps_per_epoch
    variants = {k: v for k, v in VARIANTS.items() if not (a.only_after and v == 1)}
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "checkpoints.pt")
        trained = spawn(argv, "--child", "train", "--state", state)
        print(f"train: {trained}", file=sys.stderr)
        scored = {name: [] for name in variants}
        for _ in range(a.repeats):
            for name, every in variants.items():
                scored[name].append(spawn(argv, "--child", "score", "--state", state,
                                          "--every", str(every or 0)))
                print(f"{name}: {scored[name][-1]}", file=sys.stderr)
    rows = []
    for name, every in variants.items():
        every = every or checkpoint_every(per_epoch)
        runs_ = scored[name]
        seconds = statistics.median(r["seconds"] for r in runs_)
        rows.append({
            "replay keeps": name, "every": every,
            "θ held at once": (per_epoch if every == 1 else
                               int(np.ceil(per_epoch / every)) + every),
            "steps replayed": runs_[0]["replayed"],
            "peak RSS MB": max(r["peak_mb"] for r in runs_),
            "RSS before scoring MB": statistics.median(r["before_mb"] for r in runs_),
            "peak GPU MB": max(r["gpu_peak_mb"] for r in runs_),
            "score s": seconds, "score ÷ train": seconds / trained["seconds"]})
        assert runs_[0]["replayed"] == a.epochs * replayed_steps(per_epoch, every)
    write(a, rows, trained, n_params, schedule, device_or_exit(a.device))
    result = {"n_params": n_params, "train_s": trained["seconds"],
              "train_peak_mb": trained["peak_mb"]}
    for r in rows:
        key = "before" if r["every"] == 1 else "after"
        result.update({f"{key}_peak_mb": r["peak RSS MB"], f"{key}_score_s": r["score s"]})
    summary(**result)
    return result


def write(a, rows, trained, n_params, schedule, device) -> None:
    import pandas as pd

    theta_mb = n_params * 4 / 2 ** 20
    frame = pd.DataFrame(rows)
    if device.type != "cuda":
        frame = frame.drop(columns="peak GPU MB")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    short = "; one epoch keeps this run within minutes on a 2-core CPU" if a.epochs == 1 else ""
    setting = (f"{a.images:,} random {a.shape.replace('x', '×')} images (pixels and 10 labels "
               f"uniformly random; a further 1,000 as the validation query), model `{a.model}` "
               f"({n_params:,} parameters, |θ| = {theta_mb:.1f} MB in float32), batch "
               f"{a.batch_size}, {a.epochs} epoch(s) of {schedule.steps_per_epoch} steps = "
               f"{schedule.steps} steps; exact scoring retraces all of them. The replay holds "
               "the θ of one epoch at a time, so more epochs add time (linearly) but not peak "
               f"memory{short}. Each process first "
               "runs one SGD step and one Hessian-vector pass untimed (the first call of a "
               f"torch.func transform costs seconds). Device {device}{gpu}, "
               f"torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} CPU cores.")
    sections = [
        setting,
        f"Training (one process): {trained['seconds']:.1f} s, peak RSS "
        f"{trained['peak_mb']:.0f} MB (RSS {trained['before_mb']:.0f} MB with the data loaded).",
        "Scoring, one fresh process per measurement: the data loaded, the checkpoints read and "
        "the query's gradient taken ('RSS before scoring'), then the peak reset (VmHWM := VmRSS "
        "through /proc/self/clear_refs), so that 'peak RSS' is the scoring's own. Medians of "
        f"{a.repeats} alternating run(s); peak = the largest:",
        frame.to_markdown(index=False, floatfmt=".4g"),
        f"θ held at once: the kept θ plus the segment being read (T_k/every + every), against "
        f"T_k = {schedule.steps_per_epoch}; at {theta_mb:.1f} MB each that is the memory the "
        "replay needs on top of the data and the model's activations. Steps replayed: SGD steps "
        "regenerated while scoring (T_k − 1 per epoch when every θ is kept; about one replay "
        "more with checkpoints)."]
    write_report(Path(a.out).parent, Path(a.out).stem, "Memory of exact scoring: checkpointed "
                 "replay", command(), sections)


if __name__ == "__main__":
    main()
