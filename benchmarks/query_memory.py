"""Peak memory of scoring as the validation set grows: the query gradient u = ∇θ of the mean
validation loss taken in chunks that fit the memory budget (influence.memory.MeanLoss, what
Run.influence does) against in one pass over every validation image (what it did before).

    python benchmarks/query_memory.py             # the MNIST CNN, 2,000 training images,
                                                  # 1,000 to 10,000 validation images
    python benchmarks/query_memory.py --quick     # 1,000 and 2,000 (CI)

Random 28×28 pixels and labels: memory needs no real images. Training runs once (one epoch,
batch 64); every scoring (the query gradient, then an exact retrace of the epoch) runs in a
fresh process that loads the validation images and the trained θ first and then resets its peak,
so `scoring_peak_mb` is what scoring added above the loaded process (VmHWM after − VmRSS before);
`process_peak_mb` is the whole process's peak. Target: the chunked scoring's peak flat within
20 % from 1,000 to 10,000 validation images.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, command, memory_mb, reset_peak_memory, setup, summary, write_report

import pandas as pd
import torch

from influence import memory, models
from influence.sgd import (Objective, SGDConfig, initial_params, make_schedule, per_sample_loss,
                           run_sgd)
from influence.sgd_influence import retrace

TRAIN, SHAPE = 2000, (1, 28, 28)


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def problem():
    model = models.build("cnn", (28, 28, 1), 10, seed=0)
    x, y = images(TRAIN, 0)
    obj = Objective(model, x, y)
    schedule = make_schedule(TRAIN, SGDConfig(epochs=1, batch_size=64, lr=0.05))
    return model, obj, schedule


def child(a) -> dict:
    torch.set_num_threads(a.threads)
    model, obj, schedule = problem()
    checkpoints = torch.load(a.state)
    vx, vy = images(a.val, 1)
    chunk = a.val if a.one_pass else memory.images_per_chunk(model, vx, memory.budget_bytes())
    query = memory.MeanLoss(obj.outputs, per_sample_loss, vx, vy, chunk)
    everyone = torch.ones(TRAIN, dtype=torch.bool)
    before = memory_mb("VmRSS")
    reset = reset_peak_memory()
    start = time.perf_counter()
    u = query.gradient(checkpoints[1])
    retrace(obj, schedule, checkpoints, lambda k: everyone, u, range(1))
    return {"seconds": time.perf_counter() - start, "chunk": chunk,
            "scoring_peak_mb": memory_mb("VmHWM") - before if reset else float("nan"),
            "process_peak_mb": memory_mb("VmHWM")}


def spawn(argv: list[str], *extra: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, *extra], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,2000,5000,10000", help="validation images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--val", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return
    setup(a.threads)
    sizes = [1000, 2000] if a.quick else [int(s) for s in a.sizes.split(",")]
    argv = ["--threads", str(a.threads)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        _, obj, schedule = problem()
        theta0 = initial_params(obj.model, torch.device("cpu"), torch.float32)
        everyone = torch.ones(TRAIN, dtype=torch.bool)
        state = str(Path(tmp) / "checkpoints.pt")
        torch.save(run_sgd(obj, schedule, theta0, lambda k: everyone), state)
        rows = []
        for val in sizes:
            for one_pass in (True, False):
                r = spawn(argv, "--child", "--val", str(val), "--state", state,
                          *(["--one-pass"] if one_pass else []))
                rows.append({"validation images": val,
                             "query gradient": "one pass (before)" if one_pass
                             else "chunked (now)", **r})
                print(rows[-1], file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    now = frame[frame["query gradient"] == "chunked (now)"]
    growth = now.scoring_peak_mb.max() / now.scoring_peak_mb.min() - 1
    total = now.process_peak_mb.max() / now.process_peak_mb.min() - 1
    sections = [
        f"The MNIST CNN trained one epoch on {TRAIN:,} random 28×28 images (batch 64, "
        f"{schedule.steps} steps); each scoring in a fresh process, {a.threads} torch thread. "
        "The memory budget is the default (half the free memory); the chunk is how many "
        "validation images the query gradient takes at a time.",
        f"Load average {load_before:.1f} at the start (the machine is shared; memory does not "
        "depend on it).",
        frame.to_markdown(index=False, floatfmt=".4g"),
        f"**Chunked: scoring's own peak grows by {growth:.0%} from {sizes[0]:,} to "
        f"{sizes[-1]:,} validation images, the whole process's peak by {total:.0%}** (target: "
        f"within 20 %: {'met' if total <= 0.2 else 'missed'} for the process's peak).",
    ]
    path = write_report(a.out, "query-memory" + ("-quick" if a.quick else ""),
                        "Scoring's memory as the validation set grows", command(), sections)
    print(f"wrote {path}", file=sys.stderr)
    summary(scoring_growth=float(growth), process_growth=float(total))


if __name__ == "__main__":
    main()
