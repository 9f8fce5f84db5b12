"""An ImageSet saved in a folder without pickle: `images.npy`, `labels.npy` and `meta.json`."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .core import DataError, ImageSet

META = "meta.json"


@contextmanager
def atomic_folder(target: str | os.PathLike):
    """Yield a temporary sibling folder to fill; on success it is renamed to `target`, on any
    failure removed. A crash never leaves a half-written folder under the target's name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: str | os.PathLike):
    """Yield a temporary sibling path to write; on success it is renamed to `target`, on any
    failure removed. Readers never see a half-written file under the target's name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save(data: ImageSet, folder: str | os.PathLike) -> Path:
    """Write atomically (see atomic_folder); never over an existing data set."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DataError(f"{folder} already exists: save the data set under a new name")
    try:
        with atomic_folder(folder) as tmp:
            np.save(tmp / "images.npy", data.images, allow_pickle=False)
            np.save(tmp / "labels.npy", data.labels, allow_pickle=False)
            (tmp / META).write_text(json.dumps({"classes": data.classes, "ids": data.ids,
                                                "source": data.source, "meta": data.meta}))
    except OSError as e:
        raise DataError(f"cannot save the data set to {folder}: {e.strerror or e} "
                        "(check free disk space and write permission)") from None
    return folder


def is_saved(folder: str | os.PathLike) -> bool:
    return (Path(folder) / META).is_file()


def load(folder: str | os.PathLike) -> ImageSet:
    """The saved set, or a DataError if anything is missing, damaged or of the wrong type.
    Arrays are memory-mapped first, so a forged header cannot make us allocate its shape."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        images = np.array(np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False))
        labels = np.array(np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False))
        return ImageSet(images, labels, list(meta["classes"]), list(meta["ids"]),
                        str(meta["source"]), dict(meta.get("meta", {})))
    except DataError as e:
        raise DataError(f"the saved data set in {folder} is damaged ({e}): load or upload "
                        "the data again") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, MemoryError) as e:
        raise DataError(f"the saved data set in {folder} is damaged or incomplete "
                        f"({type(e).__name__}: {e}): load or upload the data again") from None
