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
