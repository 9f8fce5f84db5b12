"""benchmarks/speed.py --quick runs end to end (no timing assertions: the machine is shared)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_speed_quick_writes_its_report(tmp_path):
    import speed

    out = tmp_path / "speed.md"
    result = speed.main(["--quick", "--out", str(out)])
    assert {"score_over_train", "last_over_train", "relabel_over_score", "speedup_vs_reference",
            "disk_ratio", "peak_rss_mb"} <= result.keys()
    assert 0 < result["disk_ratio"] < 0.5  # a checkpoint per epoch, not θ for every step
    assert "speedup_vs_reference" in out.read_text()


def test_speed_quick_times_many_test_images_explained_at_once(tmp_path):
    import speed

    out = tmp_path / "speed-explain.md"
    result = speed.main(["--quick", "--explain-only", "--out", str(out)])
    assert set(result) == {"explain_q1_s", "explain_q10_s", "explain_q100_s",
                           "explain_q10_over_single", "explain_q100_over_single"}
    assert all(v > 0 for v in result.values())
    text = out.read_text()
    assert text.splitlines()[2].startswith("Command: `python benchmarks/speed.py --quick")
    assert "explain_q100_over_single" in text
