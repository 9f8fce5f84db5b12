"""What the benchmark scripts share: paths, data, metrics, method scores, reports and charts."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
from influence import methods  # noqa: E402
from influence.config import RunConfig, RunError, device_of  # noqa: E402
from influence.runs import Run  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def setup(threads: int) -> None:
    """One thread per process by default: on 2 shared cores, torch's multi-threaded convolution
    backward was measured up to 60× slower than single-threaded (threads spin-wait on a
    busy core)."""
    torch.set_num_threads(threads)


def add_common_options(parser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for tables and plots")
    parser.add_argument("--quick", action="store_true",
                        help="a small, fast version on scikit-learn's digits (used by CI)")


def add_ray_option(parser) -> None:
    """--ray, for the scripts whose splits go through map_splits."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run each split as a Ray task: on the cluster at ADDRESS (host:port "
                             "of its head node), else at $RAY_ADDRESS, else on a Ray instance "
                             "started here. A split's figures are the same either way")


def map_splits(fn, data, calls: list[tuple], a):
    """fn(data, *args) for each args of `calls`, the results in that order: one after the other
    here, or with --ray each call as a Ray task, all submitted at once (each with a.threads
    torch threads and as many CPUs; the data set is sent once)."""
    if a.ray is None:
        for args in calls:
            yield fn(data, *args)
        return
    from app.services.cluster import send_token_if_any

    send_token_if_any()  # as the app does: before Ray is imported
    import ray

    if not ray.is_initialized():  # the code travels with the tasks: no shared file system needed
        ray.init(address=a.ray or None, runtime_env={
            "py_modules": [str(ROOT / "influence"), str(ROOT / "datasets"), __file__],
            "excludes": ["__pycache__", "*.pyc"]})
    task = ray.remote(num_cpus=a.threads)(_in_task)
    shared = ray.put(data)
    for ref in [task.remote(fn, a.threads, shared, *args) for args in calls]:
        yield ray.get(ref)


def _in_task(fn, threads: int, data, *args):
    setup(threads)
    return fn(data, *args)


def command() -> str:
    """The command line that produced a result, as one would retype it from the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


def write_report(out: str | Path, name: str, title: str, cmd: str | list[str],
                 sections: list[str]) -> Path:
    """benchmarks/results/<name>.md: the command(s) that produced it first, then the sections."""
    path = Path(out) / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"Command: `{cmd}`" if isinstance(cmd, str) else
            "Commands (one per configuration):\n\n" + "\n".join(f"- `{c}`" for c in cmd))
    path.write_text(f"# {title}\n\n{head}\n\n" + "\n\n".join(sections) + "\n")
    return path


def read_command(report: Path) -> str:
    """The command written at the top of a report by write_report."""
    line = next(ln for ln in report.read_text().splitlines() if ln.startswith("Command: `"))
    return line[len("Command: `"):-1]


def summary(**values) -> None:
    """The final `key=value …` line every script prints."""
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in values.items()), flush=True)


def jaccard_extremes(estimate: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """The paper's Jaccard index: the sets {k most negative} ∪ {k most positive} of the
    estimate and of the truth, |A ∩ B| / |A ∪ B|."""
    def extremes(v):
        order = np.argsort(v, kind="stable")
        return set(order[:k]) | set(order[-k:])

    a, b = extremes(estimate), extremes(truth)
    return len(a & b) / len(a | b)


# --- the cleansing and label-noise experiments ------------------------------------------------
def image_data(quick: bool, data_dir: str | None, digits: bool = False
               ) -> datasets.ImageSet:
    """The real MNIST test set (10,000 images, IDX files in the shared data folder next to the
    repository), or digits when quick or asked for."""
    if quick or digits:
        return datasets.load("digits")
    folder = Path(data_dir) if data_dir else SHARED_DATA / "mnist"
    return datasets.load(str(folder))


def data_name(data: datasets.ImageSet, quick: bool, data_dir: str | None) -> str:
    """The data in plain words for a report: never a machine path (data.source of a folder
    names the folder as it was found on this machine)."""
    if quick or data.source.startswith("scikit-learn"):
        return data.source  # scikit-learn's bundled digits: no path in it
    if data_dir is None or Path(data_dir).resolve() == (SHARED_DATA / "mnist").resolve():
        return f"the MNIST test set ({len(data):,} images, IDX files)"
    return f"the data set in a folder named `{Path(data_dir).name}` ({len(data):,} images)"


def prepare_experiment(a, stem: str) -> tuple[datasets.ImageSet, Path]:
    """The data, output folder and descriptive notes of a cleansing/label-noise run: fills
    a.name, a.name_out (e.g. cleansing, cleansing-quick, noisy-all), a.lr, a.model_note,
    a.data_note."""
    digits = getattr(a, "digits", False)
    a.name = "digits" if a.quick or digits else "mnist-10k"
    a.name_out = (stem + ("-quick" if a.quick else "-digits" if digits else "")
                  + ("" if a.mode == "last" else f"-{a.mode}"))
    data = image_data(a.quick, a.data_dir, digits)
    probe = Run(RunConfig(dataset=a.name, model="auto"), data)
    a.lr, a.model_note = probe.config.lr, probe.preset.name
    a.data_note = (f"{data_name(data, a.quick, a.data_dir)}, {len(probe.split.train)}/"
                   f"{len(probe.split.val)}/{len(probe.split.test)} train/validation/test")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return data, out


def train_run(data: datasets.ImageSet, seed: int, epochs: int, name: str,
              selection: float = 0.0) -> Run:
    """The paper's Section 7.2 recipe at our scale: the preset CNN for the image size, plain SGD,
    batch 64, the preset's learning rate (0.05 for the MNIST CNN), no momentum or decay;
    train/validation/test = 60/20/20 % of the data, split by `seed`. `selection`: the share of
    the validation images held out of the query (0, the paper's setting: the whole validation
    part is the query)."""
    run = Run(RunConfig(dataset=name, model="auto", epochs=epochs, batch_size=64,
                        seed=seed, device="cpu", selection_fraction=selection), data)
    run.train()
    return run


# every ranking, in the registry's order, but the refined one (100 Hessian-vector products per
# step: benchmarks/lie.py measures it on the Table-1 problems, where it is affordable)
METHODS = [key for key in methods.REGISTRY if key != "sgd-refined"]


LABELS = {key: r.name for key, r in methods.REGISTRY.items()}  # key → name in the reports


def method_scores(run: Run, keys: list[str], seed: int, hessian_samples: int = 500,
                  cg_iters: int = 20):
    """Every method's score per training position (negative = suspicious) on the mean
    validation loss, and the seconds each took. K&L: Hessian on `hessian_samples` instances,
    `cg_iters` MINRES steps."""
    options = {"sgd": {}, "sgd-refined": {}, "sgd-last": {}, "tracin": {},
               "kl": {"hessian_samples": hessian_samples, "cg_iters": cg_iters, "seed": seed}}
    scores, seconds = {}, {}
    for m in keys:
        began = time.perf_counter()
        scores[m] = methods.position_scores(run, m, **options.get(m, {"seed": seed}))
        seconds[m] = time.perf_counter() - began
    return scores, seconds


def retrain_errors(run: Run, scores: dict[str, np.ndarray], ks: list[int],
                   mode: str) -> list[dict]:
    """Test misclassification after removing each method's k most suspicious instances and
    retraining by counterfactual SGD (Run.retrain, mode 'last' or 'all')."""
    rows = []
    for method, s in scores.items():
        for k in ks:
            child = run.retrain(most_suspicious(run, s, k), mode)
            rows.append({"method": method, "k": k, "mode": mode,
                         "error": test_error(child)})
    return rows


def holm(pvalues) -> np.ndarray:
    """Holm's step-down correction of one family of p-values (statsmodels' multipletests); a
    NaN p-value (no test possible) stays NaN and is not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    corrected = np.full_like(p, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        corrected[tested] = multipletests(p[tested], method="holm")[1]
    return corrected


def holm_note(table: pd.DataFrame) -> str:
    """The sentence that goes with a table from paired_summary."""
    tests = int(np.isfinite(table["p (paired t)"]).sum())
    significant = int((table["p (Holm)"] < 0.05).sum())
    return (f"p (Holm): the paired t-test p-value corrected by Holm's method over the {tests} "
            f"tests of this table; {significant} of them below 0.05 (significant).")


def paired_summary(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean ± std of the test error per group, its mean change against no removal on the same
    split, the paired t-test p-value (scipy.stats.ttest_rel) and that p-value Holm-corrected
    over all groups of the table (one family: every row is a test of 'no change')."""
    from scipy.stats import ttest_rel

    rows = []
    for group, part in frame.groupby(keys, sort=False):
        diff = part["error"] - part["base_error"]
        p = ttest_rel(part["error"], part["base_error"]).pvalue if len(part) > 1 else np.nan
        rows.append({**dict(zip(keys, group)), "splits": len(part),
                     "test error %": mean_std(100 * part["error"]),
                     "change vs none (pp)": f"{100 * diff.mean():+.3f}",
                     "p (paired t)": float(p) if np.isfinite(p) else np.nan,
                     "_mean": part["error"].mean(), "_std": part["error"].std(ddof=0),
                     "_change": diff.mean(), "_dstd": diff.std(ddof=0)})
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("p (paired t)") + 1, "p (Holm)",
                 holm(table["p (paired t)"]))
    return table


def most_suspicious(run: Run, scores: np.ndarray, k: int) -> list[str]:
    """Sample ids of the k lowest scores."""
    return [run.train_ids[j] for j in np.argsort(scores, kind="stable")[:k]]


def test_error(run: Run) -> float:
    """Test misclassification rate of a trained run."""
    return run.evaluate("test")[1]


def line_chart(path: str | Path, frame: pd.DataFrame, x: str, y: str, err: str, series: str,
               title: str, xlabel: str, ylabel: str, baseline: float | None = None) -> Path:
    """A Figure-2-style chart: one line with error bars per method, log-scaled x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for name, part in frame.groupby(series, sort=False):
        ax.errorbar(part[x], part[y], yerr=part[err], marker="o", capsize=3, label=name)
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label="no removal")
    ax.set_xscale("log")
    ticks = sorted(frame[x].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# --- scale: devices, memory, wider models --------------------------------------------------------
def device_or_exit(name: str) -> torch.device:
    """The device a benchmark was asked for; a clear message and exit status 2 when it is cuda
    and this machine has none (instead of a traceback)."""
    try:
        return device_of(name)
    except RunError:
        print(f"error: --device {name} was asked for, but torch sees no CUDA GPU here "
              f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
              "use --device cpu or auto", file=sys.stderr)
        raise SystemExit(2) from None


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_mb(field: str = "VmHWM") -> float:
    """This process's resident memory from /proc/self/status: VmHWM its peak, VmRSS now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_memory() -> bool:
    """Start a new peak (VmHWM := VmRSS now) by writing 5 to /proc/self/clear_refs (Linux ≥ 4.0),
    so that one process can measure the peaks of its phases one after another. False where the
    kernel does not allow it (the peak then also covers the earlier phases)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def wide_cnn(width: int, hidden: int):
    """A wider CNN built for the scale benchmarks (no preset): cnn-small's two 3×3 convolutions
    with `width` and 2·width channels, then a hidden layer of `hidden` units. Most of its
    parameters are in that layer, so it has many parameters for little computation:
    width 16, hidden 512 on 32×32×3 images is 1.06M parameters."""
    from torch import nn

    def build(h: int, w: int, c: int, k: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(2 * width * (h // 4) * (w // 4), hidden), nn.ReLU(),
                             nn.Linear(hidden, k))
    return build


WIDE = {"cnn-wide": (16, 512), "cnn-wider": (32, 1024)}  # name → (width, hidden)


def register_wide_presets() -> list[str]:
    """The two wider CNNs as presets of this process (models.register), so that runs can use
    them by name like the built-in ones; the product never sees them."""
    from influence import models

    for name, (width, hidden) in WIDE.items():
        models.register(models.Preset(
            name, f"wider CNN ({width}/{2 * width} channels, {hidden} hidden)", 0.05,
            wide_cnn(width, hidden), min_side=4))
    return list(WIDE)
