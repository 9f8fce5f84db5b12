"""Built-in data sets: scikit-learn's digits (offline), torchvision's MNIST, Fashion-MNIST and
CIFAR-10 (downloaded or read from a data directory), and raw MNIST-format IDX files."""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .core import DataError, ImageSet



@dataclass(frozen=True)
class Builtin:
    """A data set known by name."""

    name: str  # what the CLI and the code call it
    title: str  # its name in the workspace, e.g. "MNIST"
    description: str  # in words, with its size and where it comes from
    torchvision: str | None = None  # the torchvision.datasets class, or None: bundled offline


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("digits", "Handwritten digits", "Handwritten digits (offline, 1,797 images)"),
    Builtin("shapes", "Coloured shapes",
            "Coloured shapes: circles, squares, triangles (synthetic, offline, 600 images)"),
    Builtin("mnist", "MNIST", "MNIST handwritten digits (70,000 images, via torchvision)",
            "MNIST"),
    Builtin("fashion-mnist", "Fashion-MNIST",
            "Fashion-MNIST clothing (70,000 images, via torchvision)", "FashionMNIST"),
    Builtin("cifar10", "CIFAR-10", "CIFAR-10 photos (60,000 images, via torchvision)",
            "CIFAR10"),
)}
DEFAULT_DATA_DIR = Path.home() / ".cache" / "sgd-influence" / "data"


def load_digits() -> ImageSet:
    """scikit-learn's bundled handwritten digits: 1,797 grayscale 8×8 images, offline."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    return ImageSet(images, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names],
                    [f"digits-{i:04d}" for i in range(len(images))],
                    "scikit-learn handwritten digits (offline, 1,797 images, 8×8)")


def data_dir(given: str | os.PathLike | None = None) -> Path:
    """Where torchvision data sets live: --data-dir, else $DATA_DIR, else a user cache folder."""
    return Path(given or os.environ.get("DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def load_torchvision(name: str, root: str | os.PathLike | None = None,
                     download: bool = True) -> ImageSet:
    """MNIST, Fashion-MNIST or CIFAR-10: official train and test parts joined into one set
    (our own split re-divides it). Downloads only when `download` and no files are there.
    MNIST-style sets also load from the gzipped IDX files alone (`<root>/MNIST/raw/*.gz`).
    CIFAR-10's files are pickles: torchvision opens them only after their MD5 matches."""
    import torchvision.datasets as tvd

    cls_name, title = BUILTINS[name].torchvision, BUILTINS[name].title
    cls, root = getattr(tvd, cls_name), data_dir(root)
    parts = []
    for train in (True, False):
        try:
            parts.append(cls(str(root), train=train, download=download))
        except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ...
            raw = root / cls_name / "raw"
            if cls_name != "CIFAR10" and len(list(raw.glob("*-idx?-ubyte.gz"))) == 4:
                parts = idx_parts(raw, tvd.MNIST.classes if name == "mnist" else
                                  tvd.FashionMNIST.classes)
                break
            how = f"could not be downloaded (no network?) ({e})" if download else "was not found"
            folder = "cifar-10-batches-py" if cls_name == "CIFAR10" else f"{cls_name}/raw"
            raise DataError(
                f"{title} {how} under {root} (torchvision expects {root / folder}). Download it "
                f"where you have network (torchvision.datasets.{cls_name}(root, download=True)) "
                "and point --data-dir or the DATA_DIR environment variable at that root."
            ) from None
    images = np.concatenate([np.asarray(p.data) for p in parts])
    if images.ndim == 3:
        images = images[..., None]
    labels = np.concatenate([np.asarray(p.targets) for p in parts]).astype(np.int64)
    n_train = len(parts[0].targets)
    ids = [f"{name}-{'train' if i < n_train else 'test'}-{i if i < n_train else i - n_train:05d}"
           for i in range(len(labels))]
    return ImageSet(images.astype(np.uint8), labels, [str(c) for c in parts[0].classes], ids,
                    f"{title} from torchvision ({root}, {len(labels):,} images)")


def idx_parts(raw: Path, classes: list[str]) -> list[SimpleNamespace]:
    """The train and test parts of an MNIST-style raw folder holding only the .gz files."""
    parts = []
    for prefix in ("train", "t10k"):
        x = read_idx(raw / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(raw / f"{prefix}-labels-idx1-ubyte.gz")
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"the {prefix} image and label files in {raw} do not match")
        parts.append(SimpleNamespace(data=x, targets=y, classes=classes))
    return parts


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (the MNIST container format), optionally gzipped, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path.name} ({e}): download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(f"{path.name} is not an unsigned-byte IDX file (MNIST format)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path.name} is truncated: its header is incomplete")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(f"{path.name} is truncated or damaged: its header says {dims}, "
                        f"which needs {math.prod(dims):,} bytes, but it holds {body.size:,}")
    return body.reshape(dims)


def load_idx_dir(folder: Path) -> ImageSet:
    """A folder of MNIST-format IDX files: every `*-images-idx3-ubyte[.gz]` with its
    `*-labels-idx1-ubyte[.gz]` partner (e.g. the 10,000-image MNIST test set alone)."""
    image_files = {}  # prefix → file; an unpacked file wins over its .gz
    for img_file in sorted(folder.glob("*-images-idx3-ubyte*")):
        image_files.setdefault(img_file.name.split("-images-")[0], img_file)
    if not image_files:
        raise DataError(f"no *-images-idx3-ubyte files in {folder}")
    images, labels, ids = [], [], []
    for prefix, img_file in image_files.items():
        label_file = next(iter(sorted(folder.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
        if label_file is None:
            raise DataError(f"{img_file.name} has no matching {prefix}-labels-idx1-ubyte file")
        x, y = read_idx(img_file), read_idx(label_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{img_file.name} and {label_file.name} do not match")
        images.append(x[..., None])
        labels.append(y.astype(np.int64))
        ids += [f"{prefix}-{i:05d}" for i in range(len(y))]
    labels = np.concatenate(labels)
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    return ImageSet(np.concatenate(images), labels, classes, ids,
                    f"MNIST-format IDX files in {folder} ({len(labels):,} images)")
