"""What the benchmark scripts share: paths, data, metrics, method scores, reports and charts.

Benchmarks import the engine (influence/) and the data sets (datasets/), never the app (app/):
only benchmarks/flow.py, which times the app's own flow, and benchmarks/estimates.py, which
measures the app's own time estimates, import it."""
from __future__ import annotations

import argparse
import inspect
import shutil
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
from datasets.builtin import data_dir  # noqa: E402
from influence import methods  # noqa: E402
from influence.compare import holm  # noqa: E402  (the one Holm correction; common.holm too)
from influence.config import RunConfig, RunError, device_of  # noqa: E402
from influence.runs import Run  # noqa: E402

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
    ray = ray_session(a.ray or None)
    task = ray.remote(num_cpus=a.threads)(_in_task)
    shared = ray.put(data)
    for ref in [task.remote(fn, a.threads, shared, *args) for args in calls]:
        yield ray.get(ref)


def ray_session(address: str | None):
    """Ray, connected once per process to the cluster at `address` (None: $RAY_ADDRESS, else a
    Ray instance started here). The engine, the data sets and this file travel with the tasks:
    no shared file system is needed. A cluster with token authentication (Ray's default) needs
    RAY_AUTH_MODE=token in this process's environment and its token (`ray get-auth-token` on
    the head node) in ~/.ray/auth_token or RAY_AUTH_TOKEN."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, runtime_env={
                "py_modules": [str(ROOT / "influence"), str(ROOT / "datasets"), __file__],
                "excludes": ["__pycache__", "*.pyc"]})
        except ConnectionError as e:
            raise SystemExit(f"error: the Ray cluster at {address or '$RAY_ADDRESS'} did not "
                             f"accept this process ({e}); with token authentication, set "
                             "RAY_AUTH_MODE=token and put its token into ~/.ray/auth_token "
                             "or RAY_AUTH_TOKEN") from None
    return ray


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


def mean_std(values, mean: str = ".3f", spread: str = ".3f") -> str:
    """"mean ± standard deviation" of the values (NaN left out), in these formats."""
    values = np.asarray(values, dtype=float)
    return f"{np.nanmean(values):{mean}} ± {np.nanstd(values):{spread}}"


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


# --- data: the product's loaders and data folder (docs/evidence.md: where each file goes) -----
# The data folder is the product's: $DATA_DIR, else ~/.cache/sgd-influence/data
# (datasets.builtin.data_dir), where the app's MNIST and torchvision's downloads live too.
MNIST_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # MNIST's test set
ADULT = {"adult-training.csv": "adult.data", "adult-test.csv": "adult.test"}  # ← UCI's names


def missing(file: str, folder: Path, more: str = "") -> SystemExit:
    """The one-line error of a data file a benchmark needs and did not find."""
    return SystemExit(f"error: {file} is missing: put it into {folder} (the data folder is "
                      f"$DATA_DIR, else {datasets.builtin.DEFAULT_DATA_DIR}; see "
                      f"docs/evidence.md){more}")


def mnist_folder() -> Path:
    """The data folder's `mnist`, which holds MNIST's test set alone (its two IDX files,
    MNIST_TEST). Where it lacks them they are copied from torchvision's MNIST/raw beside it
    (where the app's MNIST is downloaded to), downloaded there first where the network
    allows."""
    root = data_dir()
    folder, raw = root / "mnist", root / "MNIST" / "raw"
    if all((folder / name).is_file() for name in MNIST_TEST):
        return folder
    if not all((raw / name).is_file() for name in MNIST_TEST):
        try:
            import torchvision.datasets

            torchvision.datasets.MNIST(str(root), train=False, download=True)
        except Exception as e:  # no network: URLError, RuntimeError, OSError, ...
            absent = next(n for n in MNIST_TEST if not (folder / n).is_file())
            raise missing(absent, folder, " (or into MNIST/raw beside it); torchvision could "
                          f"not download it here ({type(e).__name__})") from None
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_TEST:
        shutil.copyfile(raw / name, folder / name)
    return folder


def mnist_test_set() -> datasets.ImageSet:
    """The real MNIST test set (10,000 images) by the product's loader, from mnist_folder."""
    return datasets.load(str(mnist_folder()))


def adult_folder(given: str | None = None) -> Path:
    """The folder of UCI Adult's two files (ADULT, renamed from UCI's adult.data and
    adult.test): --data-dir, else the data folder's adult; a one-line error if one is missing."""
    folder = Path(given) if given else data_dir() / "adult"
    for name, uci in ADULT.items():
        if not (folder / name).is_file():
            raise missing(name, folder, f" (UCI Adult's {uci}, renamed)")
    return folder


def add_resume_option(parser) -> None:
    """--resume, for the scripts that keep their results per split in CSVs."""
    parser.add_argument("--resume", action="store_true",
                        help="keep the splits already in the CSVs and run only the others")


def add_data_option(parser) -> None:
    """--data-dir, for the scripts whose data is MNIST's test set."""
    parser.add_argument("--data-dir", default=None,
                        help="a folder of MNIST-format IDX files or any data set folder "
                             "(default: MNIST's test set from the data folder, $DATA_DIR; "
                             "docs/evidence.md says where its files go)")


def image_data(quick: bool, data_dir: str | None, digits: bool = False
               ) -> datasets.ImageSet:
    """The real MNIST test set (10,000 images, mnist_test_set), the data set in the folder
    `data_dir` when given, or digits when quick or asked for."""
    if quick or digits:
        return datasets.load("digits")
    if data_dir is None:
        return mnist_test_set()
    try:
        return datasets.load(data_dir)
    except datasets.DataError as e:
        raise SystemExit(f"error: --data-dir {data_dir}: {e}") from None


def data_name(data: datasets.ImageSet, quick: bool, data_dir: str | None) -> str:
    """The data in plain words for a report: never a machine path (data.source of a folder
    names the folder as it was found on this machine)."""
    if quick or data.source.startswith("scikit-learn"):
        return data.source  # scikit-learn's bundled digits: no path in it
    if data_dir is None:
        return f"the MNIST test set ({len(data):,} images, IDX files)"
    return f"the data set in a folder named `{Path(data_dir).name}` ({len(data):,} images)"


SHARED_DATA = data_dir()  # the data folder, by its old name (scripts written before use it)


# --- the cleansing and label-noise experiments ------------------------------------------------
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
              selection: float = 0.0, dtype: str = "float32") -> Run:
    """The paper's Section 7.2 recipe at our scale: the preset CNN for the image size, plain SGD,
    batch 64, the preset's learning rate (0.05 for the MNIST CNN), no momentum or decay;
    train/validation/test = 60/20/20 % of the data, split by `seed`. `selection`: the share of
    the validation images held out of the query (0, the paper's setting: the whole validation
    part is the query); `dtype`: the run's precision."""
    run = Run(RunConfig(dataset=name, model="auto", epochs=epochs, batch_size=64,
                        seed=seed, device="cpu", selection_fraction=selection, dtype=dtype),
              data)
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
    options = {"kl": {"hessian_samples": hessian_samples, "cg_iters": cg_iters}}
    scores, seconds = {}, {}
    for m in keys:
        seeded = "seed" in inspect.signature(methods.get(m).compute).parameters
        began = time.perf_counter()
        scores[m] = methods.position_scores(run, m, **options.get(m, {}),
                                            **({"seed": seed} if seeded else {}))
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


# --- the label-noise experiments: noisy_find.py, noisy_eval.py, noisy_fix.py -------------------
def flip_labels(data: datasets.ImageSet, fraction: float, seed: int, parts: str = "train"
                ) -> tuple[datasets.ImageSet, np.ndarray]:
    """`fraction` of the training labels (parts "train": validation and test stay clean, the
    trusted reference the paper assumes) or of each part's ("all") changed to a random other
    class, on the split train_run makes for `seed` (datasets.plant_noise, its draw seeded by the
    split's seed, as the committed results were); the noisy copy keeps the clean split. Also:
    per position of `data`, whether its label was flipped."""
    noisy, flipped = datasets.plant_noise(data, fraction, RunConfig.val_fraction,
                                          RunConfig.test_fraction, seed, parts=parts,
                                          draw_seed=seed)
    return noisy, np.array([sid in flipped for sid in data.ids])


def recall_at(scores: np.ndarray, flipped: np.ndarray, fraction: float) -> float:
    """The share of the flipped positions among the `fraction` lowest scores."""
    top = np.argsort(scores, kind="stable")[:int(round(fraction * len(scores)))]
    return float(flipped[top].sum() / max(flipped.sum(), 1))


def met(ok: bool) -> str:
    """A target's verdict in a report."""
    return "met" if ok else "**missed**"


def label_noise_parser(doc: str, fractions: str, fractions_help: str) -> argparse.ArgumentParser:
    """The options every label-noise experiment takes (splits, epochs, noise, top-k fractions,
    retraining mode, data, --resume, threads, output, --quick, --ray)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None,
                        help="SGD epochs (default 6; 8 with --quick)")
    parser.add_argument("--noise", type=float, default=0.1, help="fraction of labels flipped")
    parser.add_argument("--fractions", default=fractions, help=fractions_help)
    parser.add_argument("--mode", choices=["last", "all"], default="last")
    add_resume_option(parser)
    add_data_option(parser)
    add_common_options(parser)
    add_ray_option(parser)
    return parser


def label_noise_setup(parser: argparse.ArgumentParser, argv, stem: str
                      ) -> tuple[argparse.Namespace, datasets.ImageSet, Path]:
    """Parse the options, set the defaults --quick changes (2 splits, 8 epochs) and prepare the
    experiment (prepare_experiment; a run of other than 6 epochs writes <stem>-<N>epochs)."""
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.epochs = min(a.splits, 2), a.epochs or 8
    a.epochs = a.epochs or 6
    a.fractions = [float(f) for f in a.fractions.split(",")]
    setup(a.threads)
    data, out = prepare_experiment(a, stem)
    if not a.quick and a.epochs != 6:  # e.g. noisy-20epochs: kept apart from the default table
        a.name_out += f"-{a.epochs}epochs"
    return a, data, out


def stored(path: Path) -> list[dict]:
    """Per-split rows kept in a CSV (none if it does not exist yet)."""
    return pd.read_csv(path).to_dict("records") if path.exists() else []


def kept_tables(files: list[Path], resume: bool, jobs, compute, key=("data", "split"),
                last: int = -1) -> list[pd.DataFrame]:
    """Rows of several tables computed job by job and kept in the CSV `files`: a job is the
    values of the columns `key` (e.g. a data set and a split), compute(*job) gives its rows of
    each table (a list of rows, or one row). Every file is written again after each job, so
    partial results survive an interruption. With `resume`, the jobs that the table `last`
    holds already are kept and not computed again. Returns the tables' rows of the jobs asked
    (rows of other jobs stay in the files)."""
    tables = ([stored(f) for f in files] if resume and all(f.exists() for f in files)
              else [[] for _ in files])
    done = {tuple(r[k] for k in key) for r in tables[last]}
    for job in jobs:
        if tuple(job) in done:
            continue
        new = compute(*job)
        tables = [old + (rows if isinstance(rows, list) else [rows])
                  for old, rows in zip(tables, new)]
        for f, rows in zip(files, tables):
            pd.DataFrame(rows).to_csv(f, index=False)
    asked = {tuple(job) for job in jobs}
    return [pd.DataFrame([r for r in rows if tuple(r[k] for k in key) in asked])
            for rows in tables]


def by_split(data, out: Path, a, suffix: str, one_split, report) -> dict:
    """An experiment of two tables kept per split in <name>.csv and <name>-<suffix>.csv, for
    the splits 0 … a.splits − 1: one_split(data, split, a) gives a split's rows of both (with
    --ray, each split a task; both files are written again after each split), report(rows,
    rows of the second, a, out) the report and its figures, printed as the summary line. With
    --resume, the splits the second file holds are kept and not computed again."""
    files = [out / f"{a.name_out}.csv", out / f"{a.name_out}-{suffix}.csv"]
    tables = [stored(f) if a.resume else [] for f in files]
    todo = [(split, a) for split in range(a.splits)
            if not any(r["split"] == split for r in tables[-1])]
    for rows in map_splits(one_split, data, todo, a):
        tables = [kept + new for kept, new in zip(tables, rows)]
        for f, part in zip(files, tables):
            pd.DataFrame(part).to_csv(f, index=False)
    result = report(*map(pd.DataFrame, tables), a, out)
    summary(**result)
    return result


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
