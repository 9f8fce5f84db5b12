"""Advice that never hurts: the app's default recommendation, applied without a person, on
planted label noise.

Per noise kind (uniform: a random other class; look-alike: 1↔7, 4↔9, 3↔5, 6↔0, 2↔8,
datasets.LOOK_ALIKE_DIGITS) and split: SIZE images drawn from the real MNIST test set, 10 % of
the labels of every part (training, validation, test) made wrong (datasets.plant_noise,
parts "all"), the app's default training (RunConfig's defaults: the preset CNN, its learning
rate, batch 64, enough epochs for 600 steps, half the validation images held out as the
selection part). Then what the pages do by default:

1. the label check of the validation images; the flagged ones are left out of the query
   (labels.check_part, as the app's yardstick check does by default);
2. the label check of the training images (labels.confident_learning) and the default ranking,
   SGD-influence exact (methods.rank "sgd"), on that query;
3. the ranking's trust check (trust.of_ranking: random groups and the top sets) and, only where
   its verdict passes, how many to remove (kcurve.curve): without a passing trust check the
   recommendation removes nothing whatever the curve says, so the curve is not computed;
4. advice.recommend — the function the pages call — and its actions applied as they are:
   every fix, every removal (the ranking's, and the flagged images whose suggested label the
   label check is unsure of: removed_flagged).

The recommended round is retrained (counterfactual SGD, mode all: the whole training again on
the same schedule) in one vectorised run with: nothing changed (the reference), CONTROLS random
rounds of the same size (as many random training images removed as the round changes: a user's
alternative with as little knowledge), the round's images removed instead of fixed, and
CONTROLS rounds that fix as many random flagged images as the round fixes (each to the label
check's suggested label) and remove the other flagged ones, with the ranking's removals: is the
choice of which flagged images to fix worth anything? Rows of the CSV computed under another
rule for the fixes (column `sure`, the threshold of advice.SURE) are computed again by
--resume.

Per run: wrong labels corrected, correct labels broken (a right label changed), wrong labels
changed to another wrong one, wrong labels left, fix precision, recall of the wrong training
labels by the recommended actions (corrected or removed), and the test error on the given
(noisy) and on the true test labels. Paired t-tests over the splits, Holm over every test of
the table.

    python benchmarks/advice.py --splits 5 --size 2000 --resume
    python benchmarks/advice.py --quick      # digits, 1 split per kind, a smoke test
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import common
from common import met
from datasets import LOOK_ALIKE_DIGITS, plant_noise
from influence import advice, kcurve, labels, methods, trust
from influence.compare import holm
from influence.config import RunConfig
from influence.counterfactual import outcomes
from influence.runs import Run
from influence.sgd import predictions

KINDS = {"uniform": None, "look-alike": LOOK_ALIKE_DIGITS}
METHOD = "sgd"  # the app's default ranking
CONTROLS = 5  # random rounds of the same size per run
THRESHOLDS = (0.5, 0.8, 0.9)  # for information: how many of the flagged images' suggested
# labels with at least this probability are right (the default fixes those of advice.SURE)
TARGETS = {"broken / corrected": 0.10, "fix precision": 0.9, "recall": 0.8}


def add_noise_options(parser: argparse.ArgumentParser) -> None:
    """The planted-noise runs' options, shared with advice_policy.py."""
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--size", type=int, default=2000, help="images drawn from the data")
    parser.add_argument("--noise", type=float, default=0.1, help="share of wrong labels per part")
    parser.add_argument("--kinds", default=",".join(KINDS), help="uniform,look-alike")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs stored in the CSV; compute only what is missing")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_noise_options(parser)
    parser.add_argument("--controls", type=int, default=CONTROLS)
    parser.add_argument("--report-only", action="store_true",
                        help="with --resume: write the report of the stored runs, compute none "
                             "(the report gives the command without this option, which computes "
                             "what is missing)")
    common.add_data_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:  # digits: one split per kind, 800 images, 2 random rounds
        a.splits, a.size, a.controls = 1, min(a.size, 800), min(a.controls, 2)
    a.kinds = [k for k in a.kinds.split(",") if k]
    return a


def draw(data, size: int, split: int):
    """`size` images of `data` drawn by the split's seed (all of them when fewer)."""
    if size >= len(data):
        return data
    rng = np.random.default_rng(10_000 + split)
    return data.subset(np.sort(rng.choice(len(data), size, replace=False)))


def say(kind: str, split: int, began: float, what: str) -> None:
    print(f"{kind} split {split}: {what} at {time.perf_counter() - began:.0f} s", flush=True)


def one_run(data, kind: str, split: int, a) -> dict:
    """One split of one noise kind: the default recommendation and what it did."""
    began = time.perf_counter()
    step = lambda what: say(kind, split, began, what)  # noqa: E731
    sub = draw(data, a.size, split)
    noisy, flipped = plant_noise(sub, a.noise, RunConfig.val_fraction, RunConfig.test_fraction,
                                 split, pairs=KINDS[kind], parts="all")
    run = Run(RunConfig(dataset=a.name, seed=split, device="cpu"), noisy)
    run.train()
    step("trained")
    classes = run.data.classes
    val = labels.check_part(run, "val")
    exclude = list(val.sample_id[val.flagged.astype(bool)])
    given = [classes[c] for c in run.objective.y.cpu().numpy()]
    check = labels.confident_learning(run).assign(sample_id=run.train_ids, label=given)
    step("label check")
    ranked = methods.rank(run, METHOD, exclude=exclude)
    step("ranked")
    checked = trust.of_ranking(run, METHOD, ranked=ranked, exclude=exclude)
    verdict = advice.trust_verdict(checked)
    step(f"trust check: {verdict.level}")
    curve = None
    if verdict.passes:
        flagged = check.sample_id[check.flagged.astype(bool)]
        _, curve = kcurve.curve(run, ranked, exclude=exclude, flagged=flagged)
    rec = advice.recommend(check, ranked, checked, curve)
    fixes = rec.fixes  # every removal: the ranking's (trust passed) and the unsure flagged ones
    remove = [*rec.remove, *(sid for sid in rec.remove_flagged if sid not in rec.remove)]
    changed = len(fixes) + len(remove)
    # retrain: nothing, the round, random rounds of its size, the round's images removed instead
    in_use = list(run.train_ids)
    rng = np.random.default_rng(split)
    randoms = [[in_use[i] for i in np.sort(rng.choice(len(in_use), changed, replace=False))]
               for _ in range(a.controls if changed else 0)]
    # as many random flagged images fixed (to their suggested labels), the other flagged ones
    # removed: the round's split of the flagged images into fixed and removed, made at random
    every_fix = advice.check_fixes(check)
    pool = sorted(set(every_fix) - set(rec.remove))
    picks = [sorted(pool[i] for i in rng.choice(len(pool), len(fixes), replace=False))
             for _ in range(a.controls if fixes and len(pool) > len(fixes) else 0)]
    removals = [[], remove, *randoms, [*remove, *fixes],
                *([*rec.remove, *(sid for sid in pool if sid not in pick)] for pick in picks)]
    sets_fixes = [{}, fixes, *([{}] * len(randoms)), {},
                  *({sid: every_fix[sid] for sid in pick} for pick in picks)]
    test_true = np.array([sub.labels[sub.ids.index(sid)] for sid in
                          (run.data.ids[i] for i in run.split.test)])
    test_given = run.part("test").y.cpu().numpy()
    rows = outcomes(run, removals, "all", exclude, fixes=sets_fixes,
                    measure=lambda theta: {"pred": predictions(run.outputs("test", theta))
                                           .cpu().numpy()})
    err_given = [float(np.mean(p != test_given)) for p in rows.pred]
    err_true = [float(np.mean(p != test_true)) for p in rows.pred]
    train_ids = set(run.train_ids)
    wrong = {sid: true for sid, true in flipped.items() if sid in train_ids}
    corrected = sum(sid in wrong and wrong[sid] == new for sid, new in fixes.items())
    wrong_to_wrong = sum(sid in wrong and wrong[sid] != new for sid, new in fixes.items())
    broken = sum(sid not in wrong for sid in fixes)
    removed_wrong = sum(sid in wrong for sid in remove)
    found = corrected + removed_wrong
    r = slice(2, 2 + len(randoms))
    instead = 2 + len(randoms)
    confidence = dict(zip(check.sample_id, check.suggested_p))
    sure = {f"fixes_p{t}": sum(confidence[sid] >= t for sid in every_fix) for t in THRESHOLDS}
    sure.update({f"corrected_p{t}": sum(confidence[sid] >= t and sid in wrong and wrong[sid] == new
                                        for sid, new in every_fix.items()) for t in THRESHOLDS})
    return {
        "kind": kind, "split": split, "size": a.size, "train": len(in_use),
        "wrong_train": len(wrong), "flagged": int(check.flagged.sum()),
        "val_flagged": len(exclude),
        "trust": verdict.level, "group_spearman": verdict.group_spearman,
        "group_p": verdict.group_p, "top_ratio": verdict.top_ratio,
        "sure": advice.SURE,  # the default's threshold for a fix (rows without: every flag)
        "how_many": rec.how_many, "fixes": len(fixes), "removed": len(rec.remove),
        "removed_flagged": len(remove) - len(rec.remove),
        "corrected": corrected, "broken": broken, "wrong_to_wrong": wrong_to_wrong,
        "removed_wrong": removed_wrong, "removed_right": len(remove) - removed_wrong,
        "wrong_left": len(wrong) - found,
        "precision": corrected / len(fixes) if fixes else np.nan,
        "recall": found / len(wrong) if wrong else np.nan,
        "error_given_none": err_given[0], "error_given_advice": err_given[1],
        "error_given_random": float(np.mean(err_given[r])) if randoms else np.nan,
        "error_given_instead": err_given[instead],
        "error_true_none": err_true[0], "error_true_advice": err_true[1],
        "error_true_random": float(np.mean(err_true[r])) if randoms else np.nan,
        "error_true_instead": err_true[instead],
        "error_true_flagged": float(np.mean(err_true[instead + 1:])) if picks else np.nan,
        "error_given_flagged": float(np.mean(err_given[instead + 1:])) if picks else np.nan,
        "recorded_error_given": common.test_error(run), **sure,
        "reasons": " | ".join(rec.reasons), "seconds": time.perf_counter() - began}


COMPARISONS = [  # (labels, advice vs, what)
    ("true", "none", "true test labels: the advice vs doing nothing"),
    ("true", "random", "true test labels: the advice vs as many random removals"),
    ("true", "instead", "true test labels: fixing vs removing the same images"),
    ("true", "flagged", "true test labels: the advice vs fixing as many random flagged images"),
    ("given", "none", "given test labels: the advice vs doing nothing"),
    ("given", "random", "given test labels: the advice vs as many random removals"),
]


def tests(frame: pd.DataFrame) -> pd.DataFrame:
    """Paired t-tests over the splits of each kind, Holm over every row of the table."""
    rows = []
    for kind, part in frame.groupby("kind", sort=False):
        for on, other, what in COMPARISONS:
            x, y = part[f"error_{on}_advice"], part[f"error_{on}_{other}"]
            ok = x.notna() & y.notna()
            diff = (x[ok] - y[ok]).to_numpy()
            # no p without a spread of the differences (one split, or all alike): t undefined
            p = stats.ttest_rel(x[ok], y[ok]).pvalue if ok.sum() > 1 and np.ptp(diff) > 1e-12 \
                else np.nan
            rows.append({"noise": kind, "comparison": what, "splits": int(ok.sum()),
                         "advice %": 100 * x[ok].mean(), "other %": 100 * y[ok].mean(),
                         "change (pp)": 100 * (x[ok] - y[ok]).mean(), "p (paired t)": p})
    table = pd.DataFrame(rows)
    table["p (Holm)"] = holm(table["p (paired t)"])
    return table


def confidence_section(frame: pd.DataFrame) -> str:
    """For information: would fixing only the confident suggestions be more precise?"""
    if f"fixes_p{THRESHOLDS[0]}" not in frame.columns:
        return ""
    rows = []
    for kind, part in frame.dropna(subset=[f"fixes_p{THRESHOLDS[0]}"]).groupby("kind",
                                                                            sort=False):
        for t in THRESHOLDS:
            fixes, right = part[f"fixes_p{t}"].sum(), part[f"corrected_p{t}"].sum()
            rows.append({"noise": kind, "runs": len(part), "suggested label's probability ≥": t,
                         "fixes": int(fixes), "corrected": int(right),
                         "precision": right / fixes if fixes else np.nan,
                         "recall": right / part.wrong_train.sum()})
    if not rows:
        return ""
    return ("## For information: the fixes at other thresholds\n\nNot what the app recommends "
            f"(it fixes the flagged images whose suggested label has a probability of at least "
            f"{advice.SURE}): the precision of the fixes whose suggested label has at least a "
            "given probability, and the share of the wrong training labels they correct. The "
            "thresholds were fixed before these figures were computed; a description, not a "
            "test.\n\n"
            + common.markdown(pd.DataFrame(rows)))


def report(frame: pd.DataFrame, a, out: Path) -> dict:
    if "removed_flagged" not in frame:  # runs from before the recommendation removed any
        frame = frame.assign(removed_flagged=0)
    frame["removed_flagged"] = frame.removed_flagged.fillna(0).astype(int)
    per_kind = frame.groupby("kind", sort=False).agg(
        runs=("split", "size"), wrong_train=("wrong_train", "sum"), flagged=("flagged", "sum"),
        trust_pass=("trust", lambda s: int((s == "pass").sum())), fixes=("fixes", "sum"),
        removed=("removed", "sum"), removed_flagged=("removed_flagged", "sum"),
        corrected=("corrected", "sum"), broken=("broken", "sum"),
        wrong_to_wrong=("wrong_to_wrong", "sum"), removed_wrong=("removed_wrong", "sum"),
        wrong_left=("wrong_left", "sum")).reset_index()
    per_kind["broken / corrected"] = per_kind.broken / per_kind.corrected.clip(lower=1)
    per_kind["fix precision"] = per_kind.corrected / per_kind.fixes.clip(lower=1)
    per_kind["recall"] = (per_kind.corrected + per_kind.removed_wrong) / per_kind.wrong_train
    table = tests(frame)
    raised = table[table.comparison.str.startswith("true test labels: the advice vs doing")]
    never_raises = bool(((raised["change (pp)"] <= 0) | ~(raised["p (Holm)"] < 0.05)).all())
    targets = []
    for row in per_kind.itertuples():
        b, pr, rc = row[-3], row[-2], row[-1]
        targets.append(f"- {row.kind}: broken {row.broken} = {b:.1%} of the {row.corrected} "
                       f"corrected (target ≤ 10 %: {met(b <= TARGETS['broken / corrected'])}); "
                       f"fix precision {pr:.3f} (target ≥ 0.9: "
                       f"{met(pr >= TARGETS['fix precision'])}); recall {rc:.3f} of the "
                       f"{row.wrong_train} wrong training labels (target ≥ 0.8: "
                       f"{met(rc >= TARGETS['recall'])})")
    targets.append(f"- the default action never raises the true-label test error significantly "
                   f"(paired t, Holm): {met(never_raises)}")
    cols = ["kind", "split", "trust", "group_spearman", "top_ratio", "fixes", "removed",
            "removed_flagged",
            "corrected", "broken", "wrong_to_wrong", "wrong_left", "precision", "recall",
            "error_true_none", "error_true_advice", "error_true_random", "error_true_instead",
            "error_true_flagged",
            "error_given_none", "error_given_advice", "seconds"]
    done = ", ".join(f"{k}: {n}" for k, n in frame.groupby("kind", sort=False).size().items())
    sections = [
        f"Data: {a.data_note}; {a.noise:.0%} of the labels of every part wrong; runs per noise "
        f"kind: {done} (of {a.splits} asked). The app's default training, ranking "
        f"(SGD-influence exact, on the validation images the label check does not flag), trust "
        f"check and recommendation (influence.advice.recommend), applied as recommended; "
        f"{a.controls} random rounds of the same size per run. Method: the docstring of "
        f"benchmarks/advice.py.",
        "## Targets\n\n" + "\n".join(targets),
        "## Per noise kind (sums over the runs)\n\n" + common.markdown(per_kind),
        "## Test error (paired over splits)\n\n" + common.markdown(table) +
        f"\n\nHolm over the {int(table['p (paired t)'].notna().sum())} tests of this table. "
        f"With at most {int(table.splits.max())} splits per noise kind a paired t-test has "
        "little power (p is empty where the differences show no spread: one split, or the "
        "same difference in every split): a change of a point or less is not detectable.",
        "## Per run\n\n" + common.markdown(frame[cols]),
        "## Why (the recommendation's reasons, first run of each kind)\n\n" + "\n".join(
            f"- {kind}: " + part.reasons.iloc[0] for kind, part in
            frame.groupby("kind", sort=False)),
    ]
    sections += [s for s in [confidence_section(frame)] if s]
    if a.size < 10000 and not a.quick:
        larger = out / "advice-10000.md"
        sections.append(
            f"The 10,000-image version (`--size 10000`): [{larger.name}]({larger.name})."
            if larger.exists() else f"Only {a.size:,} images: the 10,000-image version "
            "(`--size 10000`) was not run for lack of compute time.")
    cmd = common.command().replace(" --report-only", "")
    common.write_report(out, a.name_out, "Advice that never hurts: the default recommendation "
                        "on planted label noise", cmd, sections)
    first = per_kind.iloc[0]
    return {"runs": len(frame), "precision": float(first["fix precision"]),
            "recall": float(first["recall"]), "never_raises": int(never_raises)}


def main(argv=None) -> None:
    a = parse(argv)
    common.setup(a.threads)
    data = common.image_data(a.quick, a.data_dir)
    a.name = "digits" if a.quick else "mnist"
    a.name_out = "advice" + ("-quick" if a.quick else "" if a.size == 2000 else f"-{a.size}")
    a.data_note = (f"{a.size:,} images drawn per split from "
                   f"{common.data_name(data, a.quick, a.data_dir)}, 60/20/20 % "
                   "train/validation/test")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{a.name_out}.csv"
    # rows of an earlier rule for the fixes (no `sure`, or another threshold) are computed again
    rows = [r for r in (common.stored(path) if a.resume else [])
            if r.get("sure") == advice.SURE]
    for split in range(a.splits):
        for kind in a.kinds:
            if a.report_only or any(r["kind"] == kind and r["split"] == split for r in rows):
                continue
            rows.append(one_run(data, kind, split, a))
            pd.DataFrame(rows).to_csv(path, index=False)
            print(f"{kind} split {split}: {rows[-1]['seconds']:.0f} s", flush=True)
    common.summary(**report(pd.DataFrame(rows), a, out))


if __name__ == "__main__":
    main()
