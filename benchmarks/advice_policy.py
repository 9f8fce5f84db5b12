"""Which flagged images to fix: policies over the label check's flags, chosen held out.

Same data and noise as benchmarks/advice.py (its draw, datasets.plant_noise with parts "all",
RunConfig's default training), but only the label check of the training images
(labels.confident_learning: 5-fold out-of-sample probabilities and cleanlab's
find_label_issues): no ranking, no trust check, no retraining beyond the label check's folds.
Per flagged image (with another suggested label) it keeps the given, true and suggested label,
the suggested label's probability suggested_p, the margin over the second most probable
class, the out-of-sample probability of the given label, and the trained model's own prediction
(the model trained on the given label: does it still predict the suggested one?).

Policies over the flagged images:

    (a) fix all          every flagged image fixed to its suggested label (the default before);
    (b) fix p ≥ t, remove the rest    fixed where suggested_p ≥ t, else removed;
    (c) fix p ≥ t, review the rest    fixed where suggested_p ≥ t, else left for a person
                                      (neither corrected nor removed by the recommendation);
    (d) fix if agree, remove the rest fixed where the trained model predicts the suggested label
                                      too, else removed;
    (e) fix if p ≥ t and agree, remove the rest   both of (b) and (d) for a fix.

Per policy: fixes, corrected (a wrong label fixed to the true one), broken (a right label
changed), precision (corrected / fixes), broken / corrected, recall (wrong training labels
corrected or removed / all wrong training labels, flagged or not). A removed image breaks no
label.

The threshold t is chosen held out, by a rule fixed before any figure was seen: on the runs of
one noise kind, the smallest t of THRESHOLDS whose summed figures meet precision ≥ 0.9 and
broken / corrected ≤ 0.1 (the highest recall among those, since the fixes only shrink as t
grows); where none does, the t of highest precision. That t is then reported on the runs of the
other noise kind (chosen on uniform, reported on look-alike, and vice versa), and, as a second
held-out reading, leave one run out over all runs (t chosen on the other runs of both kinds,
applied to the one left out, figures summed).

A confirmation, fixed after the held-out figures of splits 0–4 were seen (no policy met the
targets held out on look-alike noise there; t = 0.95, chosen on the look-alike runs, met them
on the uniform ones): policy (b) with t = CONFIRM_T on fresh splits (5–9) of both noise kinds,
which took no part in any choice.

    python benchmarks/advice_policy.py --splits 10 --resume
    python benchmarks/advice_policy.py --quick      # digits, 1 split per kind, a smoke test
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
from advice import KINDS, add_noise_options, draw
from common import met
from datasets import plant_noise
from influence import labels
from influence.config import RunConfig
from influence.runs import Run

THRESHOLDS = (*(round(t, 2) for t in np.arange(0.4, 0.96, 0.05)), 0.975, 0.99)
CHOICE_SPLITS = 5  # splits 0–4: the held-out choice; the later splits: the confirmation
CONFIRM_T = 0.95  # policy (b)'s t in the confirmation, fixed before its splits were run
TARGETS = {"precision": 0.9, "broken / corrected": 0.10, "recall": 0.8}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_noise_options(parser)
    parser.add_argument("--report-only", action="store_true",
                        help="with --resume: write the report of the stored runs, compute none")
    common.add_data_option(parser)
    common.add_common_options(parser)
    a = parser.parse_args(argv)
    if a.quick:
        a.splits, a.size = 1, min(a.size, 800)
    a.kinds = [k for k in a.kinds.split(",") if k]
    return a


def one_run(data, kind: str, split: int, a) -> tuple[dict, list[dict]]:
    """One split of one noise kind: the label check and, per flagged image, its signals."""
    began = time.perf_counter()
    sub = draw(data, a.size, split)
    noisy, flipped = plant_noise(sub, a.noise, RunConfig.val_fraction, RunConfig.test_fraction,
                                 split, pairs=KINDS[kind], parts="all")
    run = Run(RunConfig(dataset=a.name, seed=split, device="cpu"), noisy)
    run.train()
    classes = [str(c) for c in run.data.classes]
    probs = labels.fold_probabilities(run)
    given = run.objective.y.cpu().numpy()
    check = labels.label_quality(given, probs, run.data.classes,
                                 run.keep_at(run.schedule.epochs - 1).cpu().numpy())
    own = run.probabilities("train").argmax(1)
    ids = list(run.train_ids)
    true_of = {sid: str(t) for sid, t in flipped.items()}
    wrong = sum(sid in true_of for sid in ids)
    second = np.sort(probs, 1)[:, -2]
    images = []
    for i in np.flatnonzero(check.flagged.to_numpy()):
        suggested = str(check.suggested_label.iloc[i])
        if suggested == classes[given[i]]:
            continue  # flagged but the check keeps the given label: never a fix
        images.append({
            "kind": kind, "split": split, "sample_id": ids[i], "given": classes[given[i]],
            "true": true_of.get(ids[i], classes[given[i]]), "suggested": suggested,
            "suggested_p": float(check.suggested_p.iloc[i]),
            "margin": float(check.suggested_p.iloc[i] - second[i]),
            "given_p": float(probs[i, given[i]]), "own": classes[own[i]]})
    run_row = {"kind": kind, "split": split, "train": len(ids), "wrong_train": wrong,
               "flagged": int(check.flagged.sum()), "seconds": time.perf_counter() - began}
    return run_row, images


# --- the policies -----------------------------------------------------------------------------
def decide(images: pd.DataFrame, policy: str, t: float | None) -> pd.Series:
    """fix / remove / review per flagged image."""
    if policy == "a":
        return pd.Series("fix", index=images.index)
    if policy == "d":
        return pd.Series(np.where(images.own == images.suggested, "fix", "remove"),
                         index=images.index)
    sure = images.suggested_p >= t
    if policy == "e":
        sure &= images.own == images.suggested
    return pd.Series(np.where(sure, "fix", "review" if policy == "c" else "remove"),
                     index=images.index)


def score(images: pd.DataFrame, runs: pd.DataFrame, policy: str, t: float | None) -> dict:
    """The summed figures of a policy over some runs."""
    return score_actions(images.assign(action=decide(images, policy, t)), runs)


def score_actions(images: pd.DataFrame, runs: pd.DataFrame) -> dict:
    """The summed figures of decided actions (column action: fix / remove / review) over some
    runs: recall over every wrong training label of these runs, flagged or not."""
    wrong = images.given != images.true
    fix, remove = images.action == "fix", images.action == "remove"
    corrected = int((fix & wrong & (images.suggested == images.true)).sum())
    broken = int((fix & ~wrong).sum())
    fixes = int(fix.sum())
    found = corrected + int((remove & wrong).sum())
    total = int(runs.wrong_train.sum())
    return {"fixes": fixes, "corrected": corrected, "broken": broken,
            "wrong_to_wrong": int((fix & wrong & (images.suggested != images.true)).sum()),
            "removed": int(remove.sum()), "removed_wrong": int((remove & wrong).sum()),
            "review": int((images.action == "review").sum()),
            "precision": corrected / fixes if fixes else np.nan,
            "broken / corrected": broken / corrected if corrected else np.nan,
            "recall": found / total if total else np.nan, "wrong_train": total}


def meets(s: dict) -> bool:
    return bool(s["precision"] >= TARGETS["precision"]
                and s["broken / corrected"] <= TARGETS["broken / corrected"])


def choose(images: pd.DataFrame, runs: pd.DataFrame, policy: str) -> float:
    """The rule fixed beforehand: the smallest t meeting precision and broken / corrected on
    these runs, else the t of highest precision."""
    scored = {t: score(images, runs, policy, t) for t in THRESHOLDS}
    ok = [t for t, s in scored.items() if meets(s)]
    if ok:
        return min(ok)
    return max(scored, key=lambda t: np.nan_to_num(scored[t]["precision"], nan=-1))


POLICIES = {"a": "(a) fix all flagged", "b": "(b) fix if p ≥ t, else remove",
            "c": "(c) fix if p ≥ t, else review", "d": "(d) fix if the model agrees, else remove",
            "e": "(e) fix if p ≥ t and the model agrees, else remove"}


def held_out(images: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    kinds = list(dict.fromkeys(runs.kind))
    for policy, name in POLICIES.items():
        thresholded = policy in ("b", "c", "e")
        # across noise kinds: chosen on one, reported on the other
        for on in (kinds if thresholded else kinds[:1]):
            for other in kinds:
                if thresholded and other == on and len(kinds) > 1:
                    continue
                t = choose(images[images.kind == on], runs[runs.kind == on], policy) \
                    if thresholded else None
                rows.append({"policy": name, "held out": f"t chosen on {on}" if thresholded
                             else "nothing to choose", "reported on":
                             other, "t": t, **score(images[images.kind == other],
                                                    runs[runs.kind == other], policy, t)})
        # leave one run out over every run
        keys = list(runs[["kind", "split"]].itertuples(index=False, name=None))
        if len(keys) < 2 or not thresholded:
            continue
        for kind in kinds:
            parts, ts = [], []
            for key in keys:
                if key[0] != kind:
                    continue
                rest_i = [(k, s) != key for k, s in zip(images.kind, images.split)]
                rest_r = [(k, s) != key for k, s in zip(runs.kind, runs.split)]
                t = choose(images[rest_i], runs[rest_r], policy) if thresholded else None
                one_i = images[[not r for r in rest_i]]
                one_r = runs[[not r for r in rest_r]]
                parts.append((decide(one_i, policy, t), one_i, one_r))
                ts.append(t)
            joined_i = pd.concat([p[1].assign(action=p[0]) for p in parts])
            joined_r = pd.concat([p[2] for p in parts])
            s = score_actions(joined_i, joined_r)
            rows.append({"policy": name, "held out": "leave one run out", "reported on": kind,
                         "t": ", ".join(f"{t:g}" for t in sorted(set(ts))) if thresholded
                         else None, **s})
    return pd.DataFrame(rows)


def confirmation(runs: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Policies (a) and (b) at CONFIRM_T on the fresh splits, per noise kind."""
    rows = []
    for kind in dict.fromkeys(runs.kind):
        r, i = runs[runs.kind == kind], images[images.kind == kind]
        for policy, t in (("a", None), ("b", CONFIRM_T)):
            rows.append({"policy": POLICIES[policy], "reported on": kind, "t": t,
                         "splits": ", ".join(map(str, sorted(r.split))), **score(i, r, policy, t)})
    return pd.DataFrame(rows)


def met_line(row) -> str:
    pr, bc, rc = row["precision"], row["broken / corrected"], row["recall"]
    return (f"precision {pr:.3f}, broken / corrected {bc:.3f}, recall {rc:.3f}: "
            f"{met(pr >= 0.9 and bc <= 0.1 and rc >= 0.8)}")


def report(runs: pd.DataFrame, images: pd.DataFrame, a, out: Path) -> dict:
    fresh = runs.split >= CHOICE_SPLITS
    confirm = confirmation(runs[fresh], images[images.split >= CHOICE_SPLITS]) \
        if fresh.any() else None
    runs_all = runs
    runs, images = runs[~fresh], images[images.split < CHOICE_SPLITS]
    table = held_out(images, runs)
    lines = [f"- {row.policy}, {row['held out']}, on {row['reported on']}: {met_line(row)}"
             for _, row in table.iterrows()]
    curve = pd.DataFrame([{"kind": k, "t": t, **score(images[images.kind == k],
                                                      runs[runs.kind == k], p, t)}
                          for k in dict.fromkeys(runs.kind) for p in ("b",)
                          for t in THRESHOLDS])
    done = ", ".join(f"{k}: {n}" for k, n in runs.groupby("kind", sort=False).size().items())
    fresh_done = ", ".join(f"{k}: {n}" for k, n in
                           runs_all[fresh].groupby("kind", sort=False).size().items())
    sections = [
        f"Data: {a.data_note}; {a.noise:.0%} of the labels of every part wrong; runs per noise "
        f"kind for the choice (splits 0–{CHOICE_SPLITS - 1}): {done}; for the confirmation "
        f"(later splits): {fresh_done or 'none yet'} (of {a.splits} splits asked). The app's default training and label check "
        "(influence.labels: 5-fold out-of-sample probabilities, cleanlab). Method and the rule "
        "that chooses t: the docstring of benchmarks/advice_policy.py. Targets: precision ≥ "
        "0.9, broken ≤ 10 % of corrected, recall ≥ 0.8; a removed image breaks no label; "
        "images left for review count as neither corrected nor removed.",
        "## Held out (sums over the runs reported on)\n\n" + common.markdown(table),
        "## Targets met, held out\n\n" + "\n".join(lines),
        *([f"## Confirmation on fresh splits: policy (b) with t = {CONFIRM_T}, fixed before "
           "these splits were run\n\n" + common.markdown(confirm) + "\n\n" + "\n".join(
               f"- {row.policy}" + (f", t = {row.t:g}" if pd.notna(row.t) else "")
               + f", on {row['reported on']} (splits "
               f"{row.splits}): {met_line(row)}" for _, row in confirm.iterrows())]
          if confirm is not None else []),
        "## Per run\n\n" + common.markdown(runs_all),
        "## For information, not held out: policy (b) at every t, per noise kind\n\n"
        + common.markdown(curve),
    ]
    cmd = common.command().replace(" --report-only", "")
    for kind in KINDS:
        cmd = cmd.replace(f" --kinds {kind}", "")
    common.write_report(out, "advice-policy" + ("-quick" if a.quick else ""),
                        "Which flagged images to fix: policies chosen held out", cmd, sections)
    b = table[(table.policy == POLICIES["b"]) & (table["held out"] == "leave one run out")]
    if confirm is not None:
        table = pd.concat([table, confirm.assign(**{"held out": "confirmation"})],
                          ignore_index=True)
    table.to_csv(out / ("advice-policy" + ("-quick" if a.quick else "") + ".csv"), index=False)
    return {"runs": len(runs_all), "b_precision": float(b.precision.min()) if len(b) else np.nan,
            "b_recall": float(b.recall.min()) if len(b) else np.nan}


def main(argv=None) -> None:
    a = parse(argv)
    common.setup(a.threads)
    data = common.image_data(a.quick, a.data_dir)
    a.name = "digits" if a.quick else "mnist"
    a.data_note = (f"{a.size:,} images drawn per split from "
                   f"{common.data_name(data, a.quick, a.data_dir)}, 60/20/20 % "
                   "train/validation/test")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "advice-policy" + ("-quick" if a.quick else "")
    for kind in a.kinds:
        if a.report_only:
            break
        runs_path, images_path = out / f"{stem}-{kind}-runs.csv", out / f"{stem}-{kind}.csv"
        runs = common.stored(runs_path) if a.resume else []
        done = {r["split"] for r in runs}
        images = [r for r in (common.stored(images_path) if a.resume else [])
                  if r["split"] in done]  # an image row is kept once its run row is
        for split in range(a.splits):
            if any(r["split"] == split for r in runs):
                continue
            row, flagged = one_run(data, kind, split, a)
            runs.append(row)
            images += flagged
            pd.DataFrame(images).to_csv(images_path, index=False)
            pd.DataFrame(runs).to_csv(runs_path, index=False)
            print(f"{kind} split {split}: {row['seconds']:.0f} s", flush=True)
    runs = pd.concat([pd.read_csv(out / f"{stem}-{k}-runs.csv") for k in KINDS
                      if (out / f"{stem}-{k}-runs.csv").exists()], ignore_index=True)
    images = pd.concat([pd.read_csv(out / f"{stem}-{k}.csv", dtype={"given": str, "true": str,
                                                                   "suggested": str, "own": str})
                        for k in KINDS if (out / f"{stem}-{k}.csv").exists()],
                       ignore_index=True)
    common.summary(**report(runs, images, a, out))


if __name__ == "__main__":
    main()
