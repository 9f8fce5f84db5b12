"""Loading and validating labelled image sets. No UI, no model code."""
from __future__ import annotations

import os
from pathlib import Path

from . import limits, storage
from .builtin import BUILTINS, load_digits, load_idx_dir, load_torchvision
from .core import DataError, ImageSet, Split, split
from .export import to_zip
from .noise import LOOK_ALIKE_DIGITS, flip_training_labels, plant_noise
from .synthetic import load_shapes
from .upload import load_upload

__all__ = ["BUILTINS", "DataError", "ImageSet", "LOOK_ALIKE_DIGITS", "Split",
           "flip_training_labels", "limits", "load", "load_upload", "plant_noise", "split",
           "storage", "to_zip"]


def load(spec: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageSet:
    """A data set by name (one of BUILTINS: digits and shapes offline, the others via
    torchvision) or by
    path: a saved data set folder, a folder of MNIST-format IDX files, a folder of class
    folders, or a ZIP.
    With `data_dir` given, torchvision sets are read from there and never downloaded."""
    if spec == "digits":
        return load_digits()
    if spec == "shapes":
        return load_shapes()
    if spec in BUILTINS:
        return load_torchvision(spec, data_dir, download=download and data_dir is None)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"no data set named {spec!r}: use one of {', '.join(BUILTINS)}, "
                        "or the path of a ZIP file or folder of images")
    if path.is_dir() and storage.is_saved(path):
        return storage.load(path)
    if path.is_dir() and any(path.glob("*-images-idx3-ubyte*")):
        return load_idx_dir(path)
    return load_upload(path)
