import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("INFLUENCE_WORKSPACE", str(ROOT / ".pytest_cache" / "workspace"))

import pytest  # noqa: E402


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh, empty app workspace for one test."""
    monkeypatch.setenv("INFLUENCE_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"
