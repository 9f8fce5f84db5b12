"""Command line: python -m influence {train,score,retrain,check,curve,explain} …

train and retrain print a final JSON line; long work shows a progress bar on stderr; errors are
one line on stderr with a non-zero exit status."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import fields
from pathlib import Path

from tqdm import tqdm

import datasets
from datasets import DataError

from . import advice, cleaning, explain, kcurve, methods, models, probe, relabel, run_folder, trust
from .config import (MAX_EPOCHS, MIN_EPOCHS, MIN_STEPS, RETRAIN_MODES, RunConfig,
                     RunError)
from .runs import Run
from .progress import Progress
from .sgd import Diverged

EXIT_ERROR = 2


_bars: list[tqdm] = []  # every bar drawn, so that an error message starts on a clean line


def progress_bar():
    """A Progress callback drawing one tqdm bar per phase on stderr."""
    bars = {}

    def report(p: Progress):
        bar = bars.get(p.phase)
        if bar is None:
            bar = bars[p.phase] = tqdm(total=p.total, desc=p.phase, file=sys.stderr,
                                       leave=False, dynamic_ncols=True)
            _bars.append(bar)
        if p.step is not None:
            bar.set_postfix(loss=f"{p.step.loss:.4f}", acc=f"{p.step.accuracy:.3f}",
                            refresh=False)
        bar.update(p.done - bar.n)
        if p.done >= p.total and p.val is None:
            bar.close()

    return report


def summary(run: Run) -> str:
    m = run.metrics
    keys = ("train_size", "val_loss", "val_error", "test_error", "test_loss", "seconds",
            "epochs", "steps", "model", "device", "chance_loss", "learned")
    return json.dumps({k: m[k] for k in keys if k in m} | {"lr": run.config.lr}
                      | ({"lr_reason": m["lr_probe"]["reason"]} if "lr_probe" in m else {})
                      | {"run": str(run.path)})


def learning_rate(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor auto") from None


def cmd_train(a) -> None:
    settings = {f.name: getattr(a, f.name) for f in fields(RunConfig)
                if hasattr(a, f.name)}  # every option is named like its setting
    auto = settings["lr"] == "auto"
    config = RunConfig(**{**settings, "lr": None if auto else settings["lr"]})
    train = probe.train_with_probe if auto else run_folder.train_new
    run = train(config, a.out, on_progress=progress_bar())
    if not run.metrics["learned"]:
        print(f"warning: the model did not learn: its validation loss "
              f"{run.metrics['val_loss']:.3g} is not clearly below {run.metrics['chance_loss']:.3g}"
              ", that of guessing from the class frequencies. Train longer (--epochs) or with "
              "another learning rate before scoring.", file=sys.stderr)
    print(summary(run))


def refuse_unlearned(run: Run, force: bool) -> None:
    if not run.metrics.get("learned", True) and not force:
        raise RunError("this model did not learn (its validation loss is not clearly below "
                       "that of guessing from the class frequencies), so influence on it "
                       "means nothing: train it longer, or give --force")


def cmd_score(a) -> None:
    method, options = a.method, {}
    if a.relabel and not methods.get(method).relabels:
        raise RunError(f"--relabel needs a method that retraces SGD: "
                       f"{' or '.join(methods.keys(relabels=True))}")
    run = run_folder.load(a.run)
    refuse_unlearned(run, a.force)
    if a.refine is not None:  # the ranking that re-scores the ends of this one
        refined = methods.keys(refines=method)
        if not refined or a.relabel:
            refinable = [r.refines for r in methods.REGISTRY.values() if r.refines]
            raise RunError("--refine re-scores the ends of the exact SGD-influence (--method "
                           f"{' or '.join(refinable)}, without --relabel)")
        if a.refine < 1:
            raise RunError("--refine must be 1 or more")
        method, options = refined[0], {"refine": a.refine}
    out = Path(a.out or Path(a.run) / "influence.csv")
    if a.relabel:  # removal scores and relabel effects from one retrace, as in the app
        frame, fixes = relabel.rank_with_effects(run, method, progress_bar())
    else:
        frame = methods.rank(run, method, progress_bar(), **options)
    run_folder.write_csv(frame, out)
    if a.relabel:
        run_folder.write_csv(fixes, out.parent / "relabel.csv")
    print(json.dumps({"out": str(out), "method": method, "n": len(frame),
                      "most_harmful": frame.sample_id.head(5).tolist()}
                     | ({"relabel": str(out.parent / "relabel.csv"),
                         "best_fixes": fixes.sample_id.head(5).tolist()} if a.relabel else {})))


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read the {what} {path}: {e}") from None


def read_ids(path: str, what: str = "removal list") -> list[str]:
    text = read_text(path, what)
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_fixes(path: str) -> dict[str, str]:
    """`sample_id,new_label` lines (CSV; an optional header line of exactly these names) as
    sample id → new label, the label by class name."""
    fixes = {}
    rows = csv.reader(read_text(path, "list of fixes").splitlines())
    for line, row in enumerate(rows, 1):
        row = [field.strip() for field in row]
        if not any(row) or (line == 1 and row == ["sample_id", "new_label"]):
            continue
        if len(row) != 2 or not all(row):
            raise RunError(f"line {line} of {path} is not `sample_id,new_label`")
        sid, label = row
        if fixes.get(sid, label) != label:
            raise RunError(f"{sid!r} has two new labels in {path}: {fixes[sid]!r} and "
                           f"{label!r}")
        fixes[sid] = label
    return fixes


def cmd_retrain(a) -> None:
    if a.remove is None and a.fix is None:
        raise RunError("give the images to remove (--remove FILE), the labels to fix "
                       "(--fix FILE), or both")
    remove = read_ids(a.remove) if a.remove is not None else []
    fixes = read_fixes(a.fix) if a.fix is not None else {}
    run = run_folder.load(a.run)
    run_folder.refuse_existing(a.out)
    if not remove and not fixes:  # retraining with no change reproduces the run: no comparison
        child = run_folder.retrain_saved(run, remove, a.mode, a.out, on_progress=progress_bar())
        print(summary(child))
        return
    planned = cleaning.check_round(run, remove, a.mode, a.controls, fixes)  # every check
    # before anything is trained or written
    child, verdict = cleaning.run_round(run, planned, a.seed, out=a.out,
                                        on_progress=progress_bar())
    figures = {k: (None if isinstance(v, float) and v != v else v)  # NaN is not JSON
               for k, v in verdict.items()}
    print(json.dumps(json.loads(summary(child)) | figures))


def cmd_check(a) -> None:
    run = run_folder.load(a.run)
    result = trust.of_ranking(run, a.method, a.n, on_progress=progress_bar(), groups=a.groups,
                              group_share=a.group_share)
    print(result["rows"].to_string(index=False), file=sys.stderr)
    print(result["top_rows"].to_string(index=False), file=sys.stderr)
    verdict = advice.trust_verdict(result)
    print(json.dumps(trust.figures(result) | {"verdict": verdict.level,
                                              "sentence": verdict.sentence}))


def cmd_curve(a) -> None:
    run = run_folder.load(a.run)
    refuse_unlearned(run, a.force)
    out = Path(a.out or Path(a.run) / "curve.csv")
    run_folder.refuse_existing(out)
    if a.ranking is not None:  # a ranking written by `score`: most harmful first
        ranked = run_folder.read_csv(a.ranking, text=("sample_id",), numbers=("influence",))
        ranked = ranked.sort_values("influence", kind="stable")
        method = str(a.ranking)
    else:
        ranked, method = methods.rank(run, a.method, on_progress=progress_bar()), a.method
    frame, found = kcurve.curve(run, ranked, a.mode, a.controls, a.seed,
                                on_progress=progress_bar())
    run_folder.write_csv(kcurve.table(frame), out)
    keys = ("k", "best_k", "helps", "loss", "loss_none", "p", "p_holm", "tests", "n_selection",
            "stability", "k_low", "k_high", "mode", "controls", "p_random", "sentence")
    print(json.dumps({"out": str(out), "method": method}
                     | {("suggested_k" if k == "k" else k):
                        None if isinstance(found[k], float) and found[k] != found[k] else found[k]
                        for k in keys}))


def cmd_explain(a) -> None:
    test_ids = list(dict.fromkeys(read_ids(a.test_ids, "list of test ids")))
    if not 1 <= len(test_ids) <= explain.MAX_TEST_IMAGES:
        raise RunError(f"{a.test_ids} lists {len(test_ids)} test ids: give 1 to "
                       f"{explain.MAX_TEST_IMAGES}")
    if a.top < 1:
        raise RunError("--top must be 1 or more")
    run = run_folder.load(a.run)
    refuse_unlearned(run, a.force)
    out = Path(a.out or Path(a.run) / "explain.csv")
    matrix = explain.test_scores(run, a.method, test_ids, on_progress=progress_bar())
    frame = explain.table(run, test_ids, matrix, a.top)
    run_folder.write_csv(frame, out)
    print(json.dumps({"out": str(out), "method": a.method, "test_images": len(test_ids),
                      "rows": len(frame)}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m influence",
                                description="SGD-influence: find the training images that hurt "
                                            "a model trained with SGD (Hara et al., 2019).")
    sub = p.add_subparsers(dest="command", required=True)

    d = RunConfig()  # every default comes from the configuration itself
    t = sub.add_parser("train", help="train a model with recorded SGD")
    t.add_argument("--dataset", default=d.dataset,
                   help=f"{', '.join(datasets.BUILTINS)}, or a path (ZIP, folder)")
    t.add_argument("--data-dir", default=d.data_dir,
                   help="folder holding downloaded torchvision data sets (default: $DATA_DIR)")
    t.add_argument("--model", default=d.model, choices=models.CHOICES,
                   help="auto: the CNN that suits the image size")
    t.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"passes over the training images (default: enough for "
                        f"{MIN_STEPS} SGD steps, {MIN_EPOCHS} to {MAX_EPOCHS})")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=learning_rate, default="auto",
                   help="learning rate η, or auto (default): a short probe of "
                        f"{len(probe.FACTORS)} rates around the model's own picks it")
    t.add_argument("--lr-decay", default=d.lr_decay, choices=("constant", "inv_sqrt"),
                   help="constant η, or η/√t")
    t.add_argument("--l2", type=float, default=d.l2, help="L2 strength α (½·α·‖θ‖²)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--val-fraction", type=float, default=d.val_fraction)
    t.add_argument("--test-fraction", type=float, default=d.test_fraction)
    t.add_argument("--selection-fraction", type=float, default=d.selection_fraction,
                   help="share of the validation images held out of the influence query, to "
                        "judge how many images to remove (`curve`); 0: none")
    t.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    t.add_argument("--dtype", default=d.dtype, choices=("float32", "float64"))
    t.add_argument("--memory-mb", type=int, default=d.memory_mb,
                   help="memory budget of scoring in MB (default: $INFLUENCE_MEMORY_BUDGET_MB, "
                        "else half the free memory); the scores are the same either way")
    t.add_argument("--out", required=True, help="new run folder")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="SGD-influence of every training instance")
    s.add_argument("run")
    s.add_argument("--method", default="sgd", choices=methods.keys(),
                   help="sgd: retrace all epochs; sgd-last: the last epoch only (faster); the "
                        "others are the baselines to compare with")
    s.add_argument("--out", help="CSV path (default RUN/influence.csv)")
    s.add_argument("--refine", type=int, metavar="M",
                   help="re-score the M most harmful and M most helpful with the first-order-"
                        f"exact forward estimate (ranking sgd-refined; its default is "
                        f"{methods.REFINE})")
    s.add_argument("--force", action="store_true",
                   help="score even a model that did not learn")
    s.add_argument("--relabel", action="store_true",
                   help="also write relabel.csv next to the scores: for every training image "
                        "the other label estimated to lower validation loss most, and its "
                        "effect (and every label's, up to 20 classes); sgd and sgd-last only, "
                        "from the same retrace")
    s.set_defaults(func=cmd_score)

    r = sub.add_parser("retrain", help="counterfactual SGD without some instances, or with "
                                       "some labels fixed")
    r.add_argument("run")
    r.add_argument("--remove", help="file with one sample_id per line")
    r.add_argument("--fix", help="file of `sample_id,new_label` lines (the label by class "
                                 "name): train with these labels instead")
    r.add_argument("--mode", default="all", choices=RETRAIN_MODES)
    r.add_argument("--controls", type=int, default=cleaning.CONTROLS,
                   help="random removals of as many images (and random fixes of as many "
                        "labels, each to a random other class), to compare with (0: none)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random controls")
    r.add_argument("--out", required=True, help="new run folder")
    r.set_defaults(func=cmd_retrain)

    c = sub.add_parser("check", help="compare estimates with real retraining")
    c.add_argument("run")
    c.add_argument("--n", type=int, default=10, help="single images to check")
    c.add_argument("--groups", type=int, default=20,
                   help="random groups of --group-share of the training images to check")
    c.add_argument("--group-share", type=float, default=0.05)
    c.add_argument("--method", default="sgd",
                   choices=methods.keys(estimates_removal=True))
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("curve", help="how many to remove: retrain without the top k of a "
                                     "ranking for several k, judged on the selection images")
    k.add_argument("run")
    k.add_argument("--method", default="sgd-last", choices=methods.keys(),
                   help="the ranking to compute (default sgd-last, fast)")
    k.add_argument("--ranking", help="use this ranking CSV (written by `score`) instead")
    k.add_argument("--mode", default="last", choices=RETRAIN_MODES,
                   help="retrain the last epoch only (default) or all epochs")
    k.add_argument("--controls", type=int, default=kcurve.CONTROLS,
                   help="random removals of each size, for the band (0: none)")
    k.add_argument("--seed", type=int, default=0, help="seed of the random removals")
    k.add_argument("--out", help="CSV path (default RUN/curve.csv)")
    k.add_argument("--force", action="store_true", help="even for a model that did not learn")
    k.set_defaults(func=cmd_curve)

    e = sub.add_parser("explain", help="why this mistake? the training images that most "
                                       "raised and most lowered each test image's loss")
    e.add_argument("run")
    e.add_argument("--test-ids", required=True, help="file with one test sample_id per line "
                                                     f"(at most {explain.MAX_TEST_IMAGES})")
    e.add_argument("--method", default="sgd", choices=methods.keys(explains="batched"),
                   help="sgd: retrace all epochs; sgd-last: the last epoch only (faster). All "
                        "test images share one retrace")
    e.add_argument("--top", type=int, default=20,
                   help="training images listed per test image and side (default 20)")
    e.add_argument("--out", help="CSV path (default RUN/explain.csv): test_id, side (harmful: "
                                 "removal lowers that test image's loss; helpful: raises it), "
                                 "rank, sample_id, label, score")
    e.add_argument("--force", action="store_true", help="explain even a model that did not "
                                                        "learn")
    e.set_defaults(func=cmd_explain)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, RunError, Diverged) as e:
        return fail(f"error: {e}", EXIT_ERROR)
    except KeyboardInterrupt:
        return fail("error: interrupted; nothing was saved", 130)
    except Exception as e:  # last line of defence: one line, no traceback
        return fail(f"error: unexpected {type(e).__name__}: {e}", 1)
    return 0


def fail(message: str, code: int) -> int:
    """Clear any progress bar still drawn, then say what went wrong on one line."""
    while _bars:
        _bars.pop().close()
    print(message, file=sys.stderr)
    return code
