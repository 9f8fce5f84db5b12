"""Where the benchmarks find their data: the product's data folder ($DATA_DIR), MNIST's test set
from torchvision's folder there, and a one-line error naming a missing file and where it goes.
No network: the IDX files are tiny fakes written here, and torchvision's download is made to
fail as it does offline."""
import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402  (benchmarks/common.py)


def fake_mnist_test_set(folder: Path, n: int = 20) -> np.ndarray:
    """MNIST's two test-set files (gzipped IDX) holding n random 28×28 images; their labels."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
    folder.mkdir(parents=True)
    for name, array in zip(common.MNIST_TEST, (images, labels)):
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return labels


def test_mnist_test_set_is_read_from_torchvisions_folder_in_the_data_folder(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    labels = fake_mnist_test_set(tmp_path / "MNIST" / "raw")
    data = common.image_data(False, None)
    assert data.labels.tolist() == labels.tolist() and data.ids[0] == "t10k-00000"
    assert sorted(f.name for f in (tmp_path / "mnist").iterdir()) == sorted(common.MNIST_TEST)
    assert common.data_name(data, False, None) == "the MNIST test set (20 images, IDX files)"
    assert common.mnist_folder() == tmp_path / "mnist"  # found there from now on


def test_a_missing_mnist_file_is_named_with_its_place_in_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(SystemExit) as stop:
        common.image_data(False, None)
    message = str(stop.value.code)
    assert message.startswith("error: t10k-images-idx3-ubyte.gz is missing: put it into "
                              f"{tmp_path / 'mnist'}")
    assert "docs/evidence.md" in message and "URLError" in message and "\n" not in message


def test_a_missing_adult_file_stops_the_benchmark_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / "lie.py"),
                           "--data", "adult", "--seeds", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DATA_DIR": str(tmp_path)})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: adult-training.csv is missing: put it into {tmp_path / 'adult'} (the data "
        f"folder is $DATA_DIR, else {common.datasets.builtin.DEFAULT_DATA_DIR}; see "
        "docs/evidence.md) (UCI Adult's adult.data, renamed)"]
    assert not (tmp_path / "out").exists()  # nothing written
