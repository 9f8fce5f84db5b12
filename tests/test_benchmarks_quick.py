"""The benchmark scripts' --quick modes (digits, few seeds, small k) run end to end, write their
reports, and show what they should, loosely. No timing assertions."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    result = run_quick("noisy.py", tmp_path, "--truth", "3")
    text = assert_report(tmp_path, "noisy-quick", "noisy.py")
    assert "Exact leave-one-out effect (3 flipped and 3 clean" in text
    assert 0 <= result["auc_truth"] <= 1 and -1 <= result["tau_truth_sgd"] <= 1
    assert (tmp_path / "noisy-quick.png").exists()
    assert result["recall10_random"] < 0.2
    assert result["recall10_sgd"] > result["recall10_random"] + 0.2
    assert result["auc_sgd"] > 0.65


def test_noisy_eval_quick_checks_the_validation_labels(tmp_path):
    result = run_quick("noisy.py", tmp_path, "--noisy-eval")
    text = assert_report(tmp_path, "noisy-eval-quick", "noisy.py")
    assert "Label check of the validation and test images" in text and "(Holm)" in text
    assert (tmp_path / "noisy-eval-quick-checks.csv").exists()
    assert result["val_precision"] > 0.5 and result["val_flagged"] > 0  # 10% planted
    assert 0 <= result["recall10_sgd"] <= 1 and 0 <= result["recall10_sgd_checked"] <= 1


def test_noisy_fix_quick_compares_fixing_with_removing(tmp_path):
    result = run_quick("noisy.py", tmp_path, "--fix", "--controls", "2")
    text = assert_report(tmp_path, "noisy-fix-quick", "noisy.py")
    assert "fix where both agree" in text and "(Holm)" in text and "Targets:" in text
    assert (tmp_path / "noisy-fix-quick-labels.csv").exists()
    assert 0 <= result["sgd_right_top10"] <= 1
    assert result["check_right_top10"] > 0.8  # the label check's suggestions on digits
    assert {"fix_gain_54", "fix_gain_108", "fix_gain_215"} <= result.keys()


def test_explain_quick_fixes_mistakes_and_compares_methods(tmp_path):
    result = run_quick("explain.py", tmp_path, "--methods", "sgd-last,similar,random")
    text = assert_report(tmp_path, "explain-quick", "explain.py")
    assert "McNemar" in text and "p (Holm)" in text and "most similar" in text
    assert result["images"] == 6
    assert all(0 <= result[f"{k}_m{m}"] <= 1 for k in ("sgd_last", "similar", "random")
               for m in (5, 10))
    # digits: removing the 10 most harmful for a mistake fixes it more often than 10 random
    assert result["sgd_last_m10"] > result["random_m10"]
