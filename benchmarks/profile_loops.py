"""Where the CPU time of the engine's three inner loops goes, and what the alternatives cost.

    python benchmarks/profile_loops.py             # digits (small CNN) and 2,000 MNIST images (CNN)
    python benchmarks/profile_loops.py --quick     # digits only, few repeats (CI)

The loops, each timed per step on the run's own model, data and batches, alternating between the
variants compared (medians, so that load from other processes hits all alike):

    train      one recorded SGD step (Eq. 2) with its bookkeeping: the unit of every ratio
    retrace    one step of Algorithm 2: the replay of θ[t] plus the forward-over-reverse pass
               (jvp of the gradient: H[t]u, ⟨u, g_i⟩, J_i u); against a double backward
    vector     one counterfactual step (Definition 2) for M = 32 removal masks: torch.func.vmap
               over all masks at once, or in chunks of c masks (vmap's chunk_size); per mask
    queries    one step of the batched-query retrace for Q = 10 queries (vmap over u); per query
    compile    torch.compile of the training step: its first call (the warm-up) and each step
               after, against the eager step

and torch.profiler's five costliest operators of each eager loop. The report says which variant
the engine uses and why.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import defaultdict

from common import RESULTS, command, image_data, setup, write_report

import pandas as pd
import torch
from torch.func import vmap

import datasets
from influence.config import RunConfig
from influence.runs import Run
from influence.sgd import batch_stats, batch_weights, initial_params, sgd_step
from influence.sgd_influence import forward_over_reverse, hvp_and_dot_grads

M, Q = 32, 10  # removal masks of a counterfactual chunk; queries of a batched retrace
CHUNKS = (None, 8, 4, 1)  # vmap chunk sizes compared (None: every mask at once)


def double_backward(obj, theta, idx, w, u):
    """The alternative to the jvp: H u and ⟨u, g_i⟩ by reverse over reverse (w a leaf, Section
    "weighted double backward")."""
    th = {k: v.detach().requires_grad_() for k, v in theta.items()}
    w = w.detach().requires_grad_()
    loss, _ = obj.weighted(th, w, idx)
    g = torch.autograd.grad(loss, list(th.values()), create_graph=True)
    dot = sum((gi * u[k]).sum() for gi, k in zip(g, th))
    return torch.autograd.grad(dot, [*th.values(), w])


def loops(run: Run) -> dict:
    """name → a function doing one unit of that loop (one step, for all its masks/queries)."""
    obj, schedule = run.objective, run.schedule
    theta = initial_params(run.model, run.device, run.dtype)
    keep = run.keep_at(0)
    batches = [torch.as_tensor(schedule.batch(t), device=run.device) for t in range(8)]
    turn = iter(range(10 ** 9))
    batch = lambda: batches[next(turn) % len(batches)]  # noqa: E731
    lr = float(schedule.lr[0])
    u = {k: torch.randn_like(v) for k, v in theta.items()}
    us = {k: torch.randn(Q, *v.shape, dtype=v.dtype, device=v.device) for k, v in theta.items()}
    thetas = {k: v.expand(M, *v.shape).clone() for k, v in theta.items()}
    keeps = keep.expand(M, -1)

    def train():
        idx = batch()
        _, (ell, out) = sgd_step(obj, theta, idx, lr, keep)
        batch_stats(obj, idx, keep, ell, out)

    def retrace(inner):
        def one():
            idx = batch()
            sgd_step(obj, theta, idx, lr, keep)
            inner(obj, theta, idx, batch_weights(keep, idx, run.dtype), u)
        return one

    def vector(chunk):
        step = vmap(lambda th, kp, idx: sgd_step(obj, th, idx, lr, kp)[0], in_dims=(0, 0, None),
                    chunk_size=chunk)
        return lambda: step(thetas, keeps, batch())

    def queries():
        idx = batch()
        sgd_step(obj, theta, idx, lr, keep)
        w = batch_weights(keep, idx, run.dtype)
        vmap(lambda v: hvp_and_dot_grads(obj, theta, idx, w, v))(us)

    return {"train": train, "retrace (jvp)": retrace(forward_over_reverse),
            "retrace (double backward)": retrace(double_backward),
            **{f"vector (chunk {c or M})": vector(c) for c in CHUNKS},
            "queries (vmap)": queries}


def per_unit(name: str) -> int:
    return M if name.startswith("vector") else Q if name.startswith("queries") else 1


def time_loops(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, alternating, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = defaultdict(list)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compiled_step(run: Run, repeats: int) -> dict:
    """torch.compile of the training step: seconds of its first call (compile + run) and the
    median step after, against the eager step, alternating; an error in words if it fails."""
    obj, schedule, keep = run.objective, run.schedule, run.keep_at(0)
    theta = initial_params(run.model, run.device, run.dtype)
    batches = [torch.as_tensor(schedule.batch(t), device=run.device) for t in range(8)]
    eager = lambda th, idx: sgd_step(obj, th, idx, 0.01, keep)  # noqa: E731
    fast = torch.compile(eager, dynamic=False)
    try:
        start = time.perf_counter()
        fast(theta, batches[0])
        warmup = time.perf_counter() - start
        for idx in batches[1:]:  # a last, smaller batch would recompile: same sizes here
            fast(theta, idx)
        times = defaultdict(list)
        for r in range(repeats * 4):
            idx = batches[r % len(batches)]
            for name, fn in (("eager", eager), ("compiled", fast)):
                start = time.perf_counter()
                fn(theta, idx)
                times[name].append(time.perf_counter() - start)
        eager_s, compiled_s = (statistics.median(times[k]) for k in ("eager", "compiled"))
        return {"warmup_s": warmup, "eager_ms": 1000 * eager_s, "compiled_ms": 1000 * compiled_s,
                "break_even_steps": warmup / max(eager_s - compiled_s, 1e-9)
                if compiled_s < eager_s else float("inf")}
    except Exception as e:  # inductor needs a C++ compiler; some transforms are unsupported
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}


def top_ops(fn, k: int = 5) -> str:
    from torch.profiler import profile
    with profile() as prof:
        for _ in range(3):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f} %" for e in events[:k])


def profile_data(name: str, data: datasets.ImageSet, repeats: int, compile_too: bool):
    run = Run(RunConfig(device="cpu"), data)  # the CPU's inner loops
    fns = loops(run)
    medians = time_loops(fns, repeats)
    step = medians["train"]
    rows = [{"data": name, "model": run.preset.name, "loop": loop, "ms": 1000 * s,
             "ms_per_unit": 1000 * s / per_unit(loop), "per_unit_over_train": s / per_unit(loop)
             / step} for loop, s in medians.items()]
    ops = [{"data": name, "loop": loop, "top operators (self CPU)": top_ops(fns[loop])}
           for loop in ("train", "retrace (jvp)", f"vector (chunk {M})", "vector (chunk 1)",
                        "queries (vmap)")]
    comp = {"data": name, **(compiled_step(run, repeats) if compile_too else {"error": "skipped"})}
    return rows, ops, comp


def conclusions(table: pd.DataFrame, comp: list[dict]) -> str:
    """What the engine does with these figures, in words, from the figures themselves."""
    lines = []
    for data, rows in table.groupby("data", sort=False):
        per = dict(zip(rows.loop, rows.per_unit_over_train))
        vector = {k: v for k, v in per.items() if k.startswith("vector")}
        best = min(vector, key=vector.get)
        lines.append(
            f"- {data}: one retraced step costs {per['retrace (jvp)']:.2f} training steps with "
            f"the jvp and {per['retrace (double backward)']:.2f} with a double backward; a "
            f"counterfactual mask costs {vector[f'vector (chunk {M})']:.2f} training steps "
            f"vmapped all at once and {best.split('(')[1][:-1]} is cheapest "
            f"({vector[best]:.2f}); a query of the batched retrace costs "
            f"{per['queries (vmap)']:.2f}.")
    for c in comp:
        if "compiled_ms" in c:
            lines.append(f"- torch.compile, {c['data']}: {c['compiled_ms']:.1f} ms a step "
                         f"compiled against {c['eager_ms']:.1f} ms eager after a "
                         f"{c['warmup_s']:.0f} s warm-up: "
                         + ("it pays after %.0f steps" % c["break_even_steps"]
                            if c["break_even_steps"] != float("inf") else "it never pays"))
    return ("What the engine does with this: counterfactual SGD runs with the vmap chunk size "
            "that `influence.costs.vmap_chunk` times fastest for the run's own model (the "
            "results are the same either way); the retrace keeps the jvp (it gives the "
            "outputs' tangents J u for the relabel effects at no extra pass); torch.compile "
            "stays off where it does not pay after its warm-up.\n\n" + "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--data-dir", default=None, help="folder of MNIST IDX files (default: "
                    "MNIST's test set from the data folder)")
    ap.add_argument("--images", type=int, default=2000, help="MNIST images (the upload size)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--quick", action="store_true", help="digits only, 2 repeats, no compile")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    setup(a.threads)
    repeats = 2 if a.quick else a.repeats
    load_before = os.getloadavg()
    sets = [("digits", datasets.load("digits"))]
    if not a.quick:
        sets.append((f"MNIST ({a.images:,})",
                     image_data(False, a.data_dir).subset(range(a.images))))
    rows, ops, comp = [], [], []
    for name, data in sets:
        r, o, c = profile_data(name, data, repeats, not (a.quick or a.no_compile))
        rows += r
        ops += o
        comp.append(c)
        print(f"{name}: " + ", ".join(f"{x['loop']} {x['ms_per_unit']:.1f} ms" for x in r),
              file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    table = pd.DataFrame(rows)
    sections = [
        f"Per-step times of the engine's inner loops, medians of {repeats} alternating repeats "
        f"at {a.threads} torch thread(s); `ms_per_unit` is per removal mask (vector, M = {M}) "
        f"or per query (queries, Q = {Q}); `per_unit_over_train` divides it by one training "
        "step timed in the same rounds.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine is "
        "shared with other jobs: compare within a row group, not across runs).",
        table.to_markdown(index=False, floatfmt=".3g"),
        "Costliest operators (torch.profiler, self CPU time, 3 calls):\n\n"
        + pd.DataFrame(ops).to_markdown(index=False),
        "torch.compile of the training step (its first call compiles; `break_even_steps`: "
        "steps after which the compiled step has paid for its warm-up):\n\n"
        + pd.DataFrame(comp).to_markdown(index=False, floatfmt=".3g"),
    ]
    sections.append(conclusions(table, comp))
    path = write_report(a.out, "profile" + ("-quick" if a.quick else ""),
                        "Profile of the inner loops", command(), sections)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
