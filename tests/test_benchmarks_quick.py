"""The benchmark scripts' --quick modes (digits, few seeds, small k) run end to end, write their
reports, and show what they should, loosely. No timing assertions."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_quick(script: str, out: Path, *extra: str) -> dict:
    """Run `benchmarks/<script> --quick`, return its final `key=value …` line as a dict."""
    done = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / script),
                           "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in (pair.split("=") for pair in last.split())}


def assert_report(out: Path, name: str, script: str) -> str:
    text = (out / f"{name}.md").read_text()
    assert f"Command: `python benchmarks/{script} --quick" in text
    assert "|" in text  # a Markdown table
    return text


def test_lie_quick_ranks_like_the_truth(tmp_path):
    result = run_quick("lie.py", tmp_path, "--seeds", "2")
    assert set(result) >= {"tau", "jaccard", "kl_tau", "kl_jaccard", "tracin_tau"}
    assert result["tau"] > 0.8  # digits logreg: SGD-influence vs 200 counterfactual runs
    assert result["tau"] >= result["tracin_tau"]  # the Hessian term matters
    # The forward estimate keeps the cross-epoch term: it ranks at least as well as Algorithm 2.
    assert result["forward_tau"] >= result["tau"]
    assert 0 < result["refined_jaccard"] <= 1 and result["forward_ratio"] > 0
    text = assert_report(tmp_path, "lie-digits-logreg-float64", "lie.py")
    assert "Forward (first-order exact)" in text and "× Algorithm 2" in text


def test_cleansing_quick_writes_table_and_chart(tmp_path):
    result = run_quick("cleansing.py", tmp_path)
    text = assert_report(tmp_path, "cleansing-quick", "cleansing.py")
    assert "SGD-influence" in text and "Random" in text and "p (paired t)" in text
    assert (tmp_path / "cleansing-quick.png").stat().st_size > 10_000
    assert 0 < result["no_removal"] < 1
    # Removing the most harmful by SGD-influence does not hurt on average (loose: 2 splits).
    assert result["sgd_best_error"] <= result["no_removal"] + 0.01


def test_noisy_quick_finds_flipped_labels_better_than_random(tmp_path):
    result = run_quick("noisy_find.py", tmp_path, "--truth", "3")
    text = assert_report(tmp_path, "noisy-quick", "noisy_find.py")
    assert "Exact leave-one-out effect (3 flipped and 3 clean" in text
    assert 0 <= result["auc_truth"] <= 1 and -1 <= result["tau_truth_sgd"] <= 1
    assert (tmp_path / "noisy-quick.png").exists()
    for part in ("ranking", "errors", "truth", "labels"):
        assert (tmp_path / f"noisy-quick-{part}.csv").exists()
    assert result["recall10_random"] < 0.2
    assert result["recall10_sgd"] > result["recall10_random"] + 0.2
    assert result["auc_sgd"] > 0.65


def test_noisy_eval_quick_checks_the_validation_labels(tmp_path):
    result = run_quick("noisy_eval.py", tmp_path)
    text = assert_report(tmp_path, "noisy-eval-quick", "noisy_eval.py")
    assert "Label check of the validation and test images" in text and "(Holm)" in text
    assert {f.name for f in tmp_path.iterdir()} == {
        "noisy-eval-quick.md", "noisy-eval-quick.csv", "noisy-eval-quick-checks.csv"}
    assert result["val_precision"] > 0.5 and result["val_flagged"] > 0  # 10% planted
    assert 0 <= result["recall10_sgd"] <= 1 and 0 <= result["recall10_sgd_checked"] <= 1


def test_noisy_fix_quick_compares_fixing_with_removing(tmp_path):
    result = run_quick("noisy_fix.py", tmp_path, "--controls", "2")
    text = assert_report(tmp_path, "noisy-fix-quick", "noisy_fix.py")
    assert "fix where both agree" in text and "(Holm)" in text and "Targets:" in text
    assert {f.name for f in tmp_path.iterdir()} == {
        "noisy-fix-quick.md", "noisy-fix-quick.csv", "noisy-fix-quick-labels.csv"}
    assert 0 <= result["sgd_right_top10"] <= 1
    assert result["check_right_top10"] > 0.8  # the label check's suggestions on digits
    assert {"fix_gain_54", "fix_gain_108", "fix_gain_215"} <= result.keys()
    assert {"recommended_gain_54", "recommended_gain_108"} <= result.keys()
    assert "in the last 2 steps" in text


def test_cleansing_quick_suggests_k_on_the_selection_part(tmp_path):
    result = run_quick("cleansing.py", tmp_path, "--selection", "0.5", "--methods",
                       "sgd,sgd-last,random", "--curve-methods", "sgd")
    text = assert_report(tmp_path, "cleansing-quick-selection", "cleansing.py")
    assert "**Suggested k**" in text and "best fixed k in hindsight (k = " in text
    assert "k = 0 (no removal)" in text and "p (Holm)" in text
    curves = pd.read_csv(tmp_path / "cleansing-quick-selection-curve.csv")
    assert sorted(curves.k.unique()) == [0, 5, 20] and set(curves.method) == {"sgd"}
    assert set(curves.suggested) <= {0, 5, 20}
    # k = 0 retrains nothing away: its test error is the model's own
    none = curves[curves.k == 0]
    assert (none.error == none.base_error).all()
    # the best fixed k in hindsight includes k = 0, so it is never worse than no removal
    assert result["hindsight_error"] <= result["none_error"]
    assert 0 <= result["suggested_error"] < 1 and result["hindsight_k"] in (0, 5, 20)


def test_scale_quick_fits_time_against_images_times_epochs(tmp_path):
    result = run_quick("scale.py", tmp_path / "scale.md")
    text = assert_report(tmp_path, "scale", "scale.py")
    assert "ms per image-epoch (slope)" in text and "Cleaning in an hour" in text
    assert (tmp_path / "scale.png").stat().st_size > 10_000 and (tmp_path / "scale.csv").exists()
    assert 0 <= result["score_r2"] <= 1 and result["score_over_train"] > 0


def test_memory_quick_keeps_fewer_thetas_than_steps(tmp_path):
    result = run_quick("memory.py", tmp_path / "memory.md")
    text = assert_report(tmp_path, "memory", "memory.py")
    assert "| every θ (before)" in text and "63 |" in text  # every θ of a 63-step epoch
    assert result["n_params"] > 1_000_000
    assert result["after_peak_mb"] < result["before_peak_mb"]  # 16 θ of 4 MB held, not 63


def test_replay_check_quick_finds_the_replay_bit_identical_on_the_cpu(tmp_path):
    result = run_quick("replay_check.py", tmp_path / "replay-check.md")
    assert_report(tmp_path, "replay-check", "replay_check.py")
    assert result == {"replay_gap_deterministic": 0, "replay_gap_default": 0, "theta_vs_cpu": 0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("script", ["speed.py", "scale.py", "memory.py", "replay_check.py"])
def test_cuda_without_a_gpu_is_refused_with_a_message(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--device cuda was asked for, but torch sees no CUDA GPU here" in done.stderr
    assert "Traceback" not in done.stderr


def test_explain_quick_fixes_mistakes_and_compares_methods(tmp_path):
    result = run_quick("explain.py", tmp_path, "--methods", "sgd-last,similar,random")
    text = assert_report(tmp_path, "explain-quick", "explain.py")
    assert "McNemar" in text and "p (Holm)" in text and "most similar" in text
    assert result["images"] == 6
    assert all(0 <= result[f"{k}_m{m}"] <= 1 for k in ("sgd_last", "similar", "random")
               for m in (5, 10))
    # digits: removing the 10 most harmful for a mistake fixes it more often than 10 random
    assert result["sgd_last_m10"] > result["random_m10"]


def test_groups_quick_sums_predict_group_removal(tmp_path):
    result = run_quick("groups.py", tmp_path)
    text = assert_report(tmp_path, "groups-quick", "groups.py")
    assert "group Spearman" in text and "predicted / actual" in text and "Seconds" in text
    assert (tmp_path / "groups-quick.png").stat().st_size > 10_000
    for part in ("groups", "topk", "times"):
        assert (tmp_path / f"groups-quick-{part}.csv").exists()
    # SGD-influence's summed scores rank random 5 % groups by their retrained change.
    assert math.isfinite(result["spearman_sgd"]) and result["spearman_sgd"] > 0
    assert all(-1 <= result[f"spearman_{m}"] <= 1 for m in ("sgd_last", "kl", "tracin"))
    assert 0 <= result["sign_sgd"] <= 1


def test_advice_quick_applies_the_default_recommendation(tmp_path):
    result = run_quick("advice.py", tmp_path)
    assert result["runs"] == 2  # one split of each noise kind
    assert 0 < result["precision"] <= 1 and 0 < result["recall"] <= 1
    text = assert_report(tmp_path, "advice-quick", "advice.py")
    assert "## Targets" in text and "look-alike" in text
    rows = pd.read_csv(tmp_path / "advice-quick.csv")
    assert (rows.removed[rows.trust != "pass"] == 0).all()  # no removal without trust
    assert (rows.corrected + rows.broken + rows.wrong_to_wrong == rows.fixes).all()


def test_advice_policy_quick_scores_the_policies_held_out(tmp_path):
    result = run_quick("advice_policy.py", tmp_path)
    assert result["runs"] == 2  # one split of each noise kind
    text = assert_report(tmp_path, "advice-policy-quick", "advice_policy.py")
    assert "## Held out" in text and "leave one run out" in text
    table = pd.read_csv(tmp_path / "advice-policy-quick.csv")
    fixed = table.corrected + table.broken + table.wrong_to_wrong
    assert (fixed == table.fixes).all()
    assert (table.removed[table.policy.str.startswith("(c)")] == 0).all()  # review, not remove
    everything = table[table.policy.str.startswith("(a)")]
    assert (everything.removed == 0).all() and (everything.review == 0).all()


def test_horizon_quick_measures_the_growth_of_u(tmp_path):
    result = run_quick("horizon.py", tmp_path)
    text = assert_report(tmp_path, "horizon-quick", "horizon.py")
    assert "Gauss-Newton" in text and "damped" in text
    assert result["growth"] > 0 and 0 <= result["growth_share_negative"] <= 1
    steps = pd.read_csv(tmp_path / "horizon-quick-steps.csv")
    gn = steps[steps.variant == "Gauss-Newton"]
    assert (gn.rayleigh >= -1e-6).all()  # positive semi-definite curvature never grows u
    assert (tmp_path / "horizon-quick.png").stat().st_size > 10_000


def test_retrace_variants_quick_compares_variants_on_groups(tmp_path):
    result = run_quick("retrace_variants.py", tmp_path)
    text = assert_report(tmp_path, "retrace-variants-quick", "retrace_variants.py")
    assert "damped, λ chosen" in text and "p (Holm)" in text and "median ratio" in text
    assert "### Top-k removals against the exact retrace's" in text  # paired over the splits
    assert re.search(r"\| digits \(app defaults\) \| last E epochs, E chosen +\| +10 \| +2 \|",
                     text)
    assert all(-1 <= v <= 1 for v in result.values())
    splits = pd.read_csv(tmp_path / "retrace-variants-quick-digits-splits.csv")
    assert splits["damped*"].str.startswith("damped-").all()


def test_linearity_quick_the_retrace_is_the_slope_of_retraining(tmp_path):
    result = run_quick("linearity.py", tmp_path)
    text = assert_report(tmp_path, "linearity-quick", "linearity.py")
    assert "### The estimate is the slope" in text and "one world against another" in text
    # float64, 10 epochs: each group retrained at weight 1 − 1e-7 changes the query loss by
    # 1e-7 times the retrace's estimate (the exact derivative of this multi-epoch run).
    assert result["slope_rho"] > 0.99 and abs(result["slope_ratio"] - 1) < 1e-3
    groups = pd.read_csv(tmp_path / "linearity-quick-groups.csv")
    assert (groups["change_world_0"] == groups["change_eps_1"]).all()  # world 0: the run
    assert -1 <= result["world_rho"] <= 1 and -1 <= result["estimate_rho_mean"] <= 1
