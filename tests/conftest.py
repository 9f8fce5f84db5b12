import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("INFLUENCE_WORKSPACE", str(ROOT / ".pytest_cache" / "workspace"))

import pytest  # noqa: E402

import helpers  # noqa: E402
from influence import runs  # noqa: E402
from influence.config import RunConfig  # noqa: E402


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh, empty app workspace for one test."""
    monkeypatch.setenv("INFLUENCE_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


@pytest.fixture
def upload(tmp_path, monkeypatch):
    """Write an upload into tmp_path/in and run from tmp_path/cwd; afterwards nothing new may
    exist in tmp_path or its parent apart from what the test wrote itself."""
    (tmp_path / "in").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    before_parent = set(os.listdir(tmp_path.parent))

    def write(content: bytes | dict, name="data.zip"):
        path = tmp_path / "in" / name
        path.write_bytes(helpers.zip_bytes(content) if isinstance(content, dict) else content)
        return path

    yield write
    assert os.listdir(tmp_path / "cwd") == []
    assert sorted(os.listdir(tmp_path)) == ["cwd", "in"]
    assert set(os.listdir(tmp_path.parent)) - before_parent <= {tmp_path.name}


@pytest.fixture(scope="module")
def digits_logreg():
    """Logistic regression on the digits, 2 epochs in float64: small enough for exact checks
    (one per test module)."""
    run = runs.Run(RunConfig(dataset="digits", model="logreg", epochs=2, lr=0.5,
                             dtype="float64"))
    run.train()
    return run
