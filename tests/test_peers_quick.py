"""benchmarks/peers.py --quick: the public attribution libraries beside SGD-influence on
groups.py's stored groups (digits, split 0). Skipped where the libraries are not installed
(they are not the product's: requirements-peers.txt, installed into .peers-lib)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
for library in ("kronfluence", "trak", "dattri", "captum"):
    pytest.importorskip(library)

METHODS = {"sgd", "sgd-damped", "kl", "tracin", "kronfluence-ekfac", "trak", "dattri-tracin",
           "dattri-if", "captum-tracincp"}


def test_peers_quick_scores_groups_py_groups(tmp_path):
    done = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / "peers.py"),
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "peers-quick.csv")
    assert set(rows.method) == METHODS and set(rows.data) == {"digits"}
    assert set(rows.split) == {0}
    assert rows.spearman.between(-1, 1).all()  # every library gave a score to every image

    # The same run and groups as groups.py: our group sums equal the stored ones.
    sums = pd.read_csv(tmp_path / "peers-quick-groups.csv")
    stored = pd.read_csv(ROOT / "benchmarks" / "results" / "groups-groups.csv")
    stored = stored[(stored.data == "digits") & (stored.split == 0)].sort_values("group")
    assert len(sums) == len(stored) == 20
    for m in ("sgd", "kl", "tracin"):
        np.testing.assert_allclose(sums[f"predicted_{m}"], stored[f"predicted_{m}"], rtol=1e-5)
    np.testing.assert_allclose(sums.actual_all, stored.actual_all)

    # TracIn is one formula: dattri's and captum's equal ours on every image.
    by = rows.set_index("method")
    for peer in ("dattri-tracin", "captum-tracincp"):
        assert by.loc[peer, "compared_with"] == "tracin"
        assert by.loc[peer, "image_pearson"] > 0.9999
        assert by.loc[peer, "scale"] == pytest.approx(1, rel=1e-3)
        assert by.loc[peer, "spearman"] == pytest.approx(by.loc["tracin", "spearman"], abs=0.02)

    # The two influence-function solvers of the same system: both residuals measured.
    assert by.loc["dattri-if", "compared_with"] == "kl"
    assert by.loc[["kl", "dattri-if"], "solver_residual"].gt(0).all()

    text = (tmp_path / "peers-quick.md").read_text()
    assert "Command: `python benchmarks/peers.py --quick" in text
    assert "captum: TracInCP" in text and "| kronfluence" in text and "p (Holm)" in text
