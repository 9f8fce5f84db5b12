"""Speed, disk and memory of SGD-influence, measured side by side in one process.

    python benchmarks/speed.py                 # the paper's MNIST CNN on the real 10k MNIST images
    python benchmarks/speed.py --quick         # digits, tiny; for CI
    python benchmarks/speed.py --device cuda   # on a GPU (fails with a message when there is none)

Reports
    score_over_train      wall time of a full retrace ÷ wall time of training the same epochs
    last_over_train       the same for the last-epoch version
    relabel_over_score    a full retrace that also gives the relabel effects of every image and
                          class (Run.relabel_influence) ÷ one that gives removal scores only
    explain_qN_over_single  explaining N test images at once (explain.retrace_test_images: one
                          retrace, N tangents vmapped through the same jvp) ÷ N × explaining
                          one, for N = 10 and 100 (target for 100: ≤ 0.2); --explain-only measures
                          these alone and writes speed-explain.md
    speedup_vs_reference  the reference algorithm's inner loop (a Python loop of one backward
                          pass per instance, plus a double-backward HVP, on stored θ[t]) ÷ ours
                          (replay θ[t] + one forward-over-reverse pass), on the same steps
    disk_ratio            bytes of our run folder ÷ bytes of storing θ for every step
    peak_rss_mb           peak resident memory of `python -m influence score` in a subprocess
Timings alternate between the things compared (train, retrace, …, train, retrace, …) and take
medians, so that load from other processes hits both sides alike.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import data_name, device_or_exit, mnist_folder  # noqa: E402  (benchmarks/ on path)
from influence import explain, run_folder  # noqa: E402
from influence.config import RunConfig, workers  # noqa: E402
from influence.runs import Run  # noqa: E402
from influence.sgd import batch_weights, replay_epoch, sgd_step  # noqa: E402
from influence.sgd_influence import hvp_and_dot_grads, loss_gradient  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def timed(fn) -> float:
    """Seconds of fn(), with the GPU work it queued (CUDA runs asynchronously)."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def reference_step(obj, theta, idx, u) -> None:
    """The authors' inner loop for one step on a stored θ[t]: one backward pass per instance
    for ⟨u, g(z_j; θ[t])⟩, then H[t]u by double backward."""
    params = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    flat = list(params.values())
    for j in idx.tolist():
        loss_j = obj.losses(params, torch.tensor([j], device=idx.device))[0].sum()
        g_j = torch.autograd.grad(loss_j, flat)
        sum(float((g * u[k]).sum()) for g, k in zip(g_j, params))
    loss = obj.losses(params, idx)[0].mean()
    g = torch.autograd.grad(loss, flat, create_graph=True)
    torch.autograd.grad(sum((gi * u[k]).sum() for gi, k in zip(g, params)), flat)


def our_step(obj, schedule, keep, t, theta_prev, idx_prev, idx, u) -> None:
    """Ours for one step: regenerate θ[t] from θ[t−1] (replay costs one SGD step per step),
    then one forward-over-reverse pass for H[t]u and every ⟨u, g(z_i; θ[t])⟩."""
    theta_t, _ = sgd_step(obj, theta_prev, idx_prev, float(schedule.lr[t - 1]), keep)
    hvp_and_dot_grads(obj, theta_t, idx, batch_weights(keep, idx, obj.x.dtype), u)


QUERIES = (1, 10, 100)  # test images explained at once


def explain_times(run, repeats: int) -> dict:
    """Median seconds of explain.retrace_test_images (all epochs) for Q = 1, 10, 100 test
    images, alternating, and each Q's time ÷ Q × the time for one."""
    ids = [run.data.ids[i] for i in run.split.test[:max(QUERIES)]]
    explain.retrace_test_images(run, ids[:1])  # warm-up
    times = {q: [] for q in QUERIES}
    for _ in range(repeats):
        for q in QUERIES:
            times[q].append(timed(lambda: explain.retrace_test_images(run, ids[:q])))
    medians = {q: statistics.median(t) for q, t in times.items()}
    return {**{f"explain_q{q}_s": medians[q] for q in QUERIES},
            **{f"explain_q{q}_over_single": medians[q] / (q * medians[1])
               for q in QUERIES if q > 1}}


def explain_rows(r: dict) -> str:
    return "\n".join(
        f"| {q} test images at once ÷ {q} × one (`explain_q{q}_over_single`) | "
        f"{r[f'explain_q{q}_over_single']:.3f} ({r[f'explain_q{q}_s']:.1f} s vs "
        f"{q} × {r['explain_q1_s']:.2f} s) | {'≤ 0.2' if q == 100 else ''} |"
        for q in QUERIES if q > 1)


def child_peak_rss_mb(code: str) -> float:
    """Peak resident memory (VmHWM) of a fresh Python process running `code`. (getrusage's
    ru_maxrss is no good here: a child inherits its parent's high-water mark across fork+exec.)"""
    probe = ("; import re; print(re.search(r'VmHWM:\\s+(\\d+)', "
             "open('/proc/self/status').read()).group(1))")
    done = subprocess.run([sys.executable, "-c", code + probe], cwd=ROOT, check=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    return int(done.stdout.split()[-1]) / 1024


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder of MNIST IDX files (default: "
                    "MNIST's test set from the data folder, docs/evidence.md)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-steps", type=int, default=8, help="steps timed for the reference")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="digits, 2 epochs, 1 repeat (for CI)")
    ap.add_argument("--digits", action="store_true",
                    help="the built-in digits and the app's small CNN instead of MNIST")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--explain-only", action="store_true",
                    help="time only the explanation of 1, 10, 100 test images at once "
                         "(default out: speed-explain.md)")
    ap.add_argument("--no-explain", action="store_true",
                    help="leave out explaining many test images at once (speed-explain.md "
                         "times it alone with --explain-only)")
    ap.add_argument("--out", default=None, help="report (default benchmarks/results/speed.md)")
    a = ap.parse_args(argv)
    device_or_exit(a.device)  # a clear message, before any work, when CUDA is asked for but absent
    a.out = a.out or str(RESULTS / ("speed-explain.md" if a.explain_only else "speed.md"))
    if a.threads:
        torch.set_num_threads(a.threads)
    dataset, model = ("digits", "auto") if a.quick or a.digits else (
        a.data_dir or str(mnist_folder()), "cnn")
    if a.quick:
        a.epochs, a.repeats, a.ref_steps = 2, 1, 2
    config = RunConfig(dataset=dataset, model=model, epochs=a.epochs,
                       batch_size=a.batch_size, lr=0.05, device=a.device, seed=0)
    run = Run(config)
    obj, schedule = run.objective, run.schedule
    print(f"{len(run.train_ids)} training images, {run.preset}, {schedule.steps} steps, "
          f"device {run.device}", file=sys.stderr)

    load_before = os.getloadavg()[0]
    run.train()  # warm-up (also fills the checkpoints)
    if a.explain_only:
        result = explain_times(run, a.repeats)
        write_explain_report(a, argv, run, result, machine_of(run))
        print(" ".join(f"{key}={value:.3f}" for key, value in result.items()))
        return result
    train_s, full_s, last_s, relabel_s = [], [], [], []
    for _ in range(a.repeats):
        train_s.append(timed(run.train))
        full_s.append(timed(lambda: run.influence()))
        last_s.append(timed(lambda: run.influence(last_epoch_only=True)))
        relabel_s.append(timed(lambda: run.relabel_influence()))
    train_t, full_t, last_t, relabel_t = (statistics.median(x)
                                          for x in (train_s, full_s, last_s, relabel_s))

    # Reference vs ours on the same steps of the last epoch.
    k = schedule.epochs - 1
    steps = list(schedule.epoch_steps(k))[-a.ref_steps:]
    thetas = replay_epoch(obj, schedule, run.checkpoints[k], k, run.keep_at(k))
    first = schedule.epoch_steps(k).start
    u = loss_gradient(run.val_loss_fn, run.theta)
    keep = run.keep_at(k)
    ref_s, ours_s = [], []
    for t in steps:
        idx, idx_prev = (torch.as_tensor(schedule.batch(s), device=run.device) for s in (t, t - 1))
        theta_t, theta_prev = thetas[t - first], thetas[t - first - 1]
        ref_s.append(timed(lambda: reference_step(obj, theta_t, idx, u)))
        ours_s.append(timed(lambda: our_step(obj, schedule, keep, t, theta_prev, idx_prev, idx,
                                             u)))
    ref_t, ours_t = statistics.median(ref_s), statistics.median(ours_s)

    with tempfile.TemporaryDirectory() as tmp:
        out = run_folder.save(run, Path(tmp) / "run")
        stored = folder_bytes(out)
        theta_bytes = sum(p.numel() * p.element_size() for p in run.theta.values())
        per_step = theta_bytes * schedule.steps
        peak_rss_mb = child_peak_rss_mb(f"from influence.cli import main; main(['score', {str(out)!r}])")
    import_rss_mb = child_peak_rss_mb("import influence.runs")
    explained = {} if a.no_explain else explain_times(run, a.repeats)

    result = {
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "replay_every": run.replay_every(), "replay_ahead": run.replay_ahead(),
        "score_over_train": full_t / train_t,
        "last_over_train": last_t / train_t,
        "relabel_over_score": relabel_t / full_t,
        "speedup_vs_reference": ref_t / ours_t,
        "disk_ratio": stored / per_step,
        "peak_rss_mb": peak_rss_mb, "import_rss_mb": import_rss_mb,
        "train_s": train_t, "score_s": full_t, "score_last_s": last_t,
        "score_relabel_s": relabel_t,
        "ref_step_ms": 1000 * ref_t, "our_step_ms": 1000 * ours_t, **explained,
    }
    write_report(a, argv, run, result, stored, per_step, machine_of(run))
    print(" ".join(f"{key}={value:.3f}" for key, value in result.items()))
    return result


def machine_of(run) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"{workers(run.device)} workers), device "
            f"{run.device}" + (f" ({torch.cuda.get_device_name()})"
                               if run.device.type == "cuda" else ""))


def write_explain_report(a, argv, run, r, machine) -> None:
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    s = run.schedule
    text = f"""# Speed of "why this mistake?": many test images in one retrace

Command: `{command.strip()}`

Machine: {machine}. Data: {data_name(run.data, a.quick, a.data_dir)}; {len(run.train_ids)}
training images, model `{run.preset.name}`, batch {s.batch_size}, {s.epochs} epochs = {s.steps}
steps. explain.retrace_test_images retraces every epoch once for all the test images given, their
query vectors vmapped through the same jvp. Medians of {a.repeats} alternating repeats.

| measure | value | target |
|---|---|---|
{explain_rows(r)}
"""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


def replay_note(every: int, ahead: bool) -> str:
    """How many θ of an epoch the replay keeps and whether it runs ahead, in words."""
    if ahead:
        return ("The replay keeps every θ of an epoch and runs one epoch ahead of the retrace "
                "on a second core (two epochs of θ fit in the memory budget); training has "
                "one step after another to do and uses one core.")
    if every == 1:
        return "The replay keeps every θ of an epoch (they fit in the memory budget)."
    return (f"The replay keeps one θ in {every} of an epoch (√T checkpoints: every θ would not "
            "fit in the memory budget).")


def write_report(a, argv, run, r, stored, per_step, machine) -> None:
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    s = run.schedule
    data = data_name(run.data, a.quick, a.data_dir)  # in words, never a machine path
    text = f"""# Speed, disk and memory

Command: `{command.strip()}`

Machine: {machine}. Data: {data}; {len(run.train_ids)} training images,
model `{run.preset.name}`, batch {s.batch_size}, {s.epochs} epochs = {s.steps} steps.
Medians of {a.repeats} alternating repeats; the reference and ours timed on the same
{a.ref_steps} steps, alternating. {replay_note(r['replay_every'], r['replay_ahead'])}
Load average {r['load_before']:.1f} before, {r['load_after']:.1f} after on {os.cpu_count()} cores:
the machine is shared, so absolute seconds vary; the ratios come from timings taken side by side.

| measure | value | target |
|---|---|---|
| full retrace ÷ training (`score_over_train`) | {r['score_over_train']:.2f} | ≤ 3.5 |
| last-epoch retrace ÷ training (`last_over_train`) | {r['last_over_train']:.2f} | ≈ 4/K = {4 / s.epochs:.2f} |
| retrace with relabel effects ÷ without (`relabel_over_score`) | {r['relabel_over_score']:.2f} | ≤ 1.15 |
| reference inner loop ÷ ours, per step (`speedup_vs_reference`) | {r['speedup_vs_reference']:.1f}× | ≥ 3 |
| run folder ÷ θ for every step (`disk_ratio`) | {r['disk_ratio']:.4f} ({stored / 1e6:.2f} MB vs {per_step / 1e6:.1f} MB) | ≤ 0.02 |
| peak RSS of `python -m influence score` (`peak_rss_mb`) | {r['peak_rss_mb']:.0f} MB | |
| of which importing torch and the engine (`import_rss_mb`) | {r['import_rss_mb']:.0f} MB | |
{explain_rows(r) if 'explain_q1_s' in r else '(explaining many test images at once: not timed in this run, see speed-explain.md)'}

Seconds: training {r['train_s']:.2f}, full retrace {r['score_s']:.2f}, last epoch
{r['score_last_s']:.2f}, full retrace with relabel effects {r['score_relabel_s']:.2f}; per step: reference {r['ref_step_ms']:.0f} ms, ours {r['our_step_ms']:.0f} ms.
"""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
