"""The benchmark scripts' --quick modes (digits, few seeds, small k) run end to end, write their
reports, and show what they should, loosely. No timing assertions."""
import math
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
    assert_report(tmp_path, "lie-digits-logreg-float64", "lie.py")


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
