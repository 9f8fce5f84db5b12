"""User uploads: a ZIP (or a plain folder) of class folders, or of images plus a `labels.csv`.

    cats-vs-dogs.zip                     labelled.zip
        cat/001.png                          labels.csv     filename,label
        cat/002.jpg                          img/001.png    img/001.png,cat
        dog/001.png  (optionally all         img/002.png    img/002.png,dog
        ...           under one top folder)  ...

How files are treated (datasets/limits.py holds every number):
* The archive is checked from its central directory before any member is read: file size,
  member count, uncompressed sizes, compression ratio, encryption, compression method, and
  every path (no absolute paths, drive letters, `..`, symlinks or special files). Members are
  read into memory through `zipfile`; nothing is ever extracted or written to disk.
* Refused, with a DataError that says what to do: anything unsafe or over a limit, a damaged
  archive (bad checksum, truncated), an image whose header declares more than MAX_PIXELS
  pixels (decompression bomb), and any labelling problem.
* Skipped, and counted: a file whose name says image but that Pillow cannot decode
  (meta["skipped"], meta["n_skipped"]). Ignored, and listed: system and non-image files
  (`.DS_Store`, `__MACOSX/`, `Thumbs.db`, README, ...), images outside the class folders or not
  named in labels.csv (meta["ignored"], meta["n_ignored"]).
* Size: the most common image size wins, shrunk (aspect kept) so no side exceeds MAX_SIDE;
  every image of another size is stretched to it (meta["resized_to"] = [width, height], or
  None when nothing was resized). JPEG EXIF rotation is applied.
* Colour: if every image is grayscale (modes 1, L, LA, I;16, I, F, or a gray palette) the set
  keeps 1 channel, otherwise all become RGB. Transparency is laid over white; 16-bit images
  are scaled to 8 bits (value / 257).
* Sample ids are the paths inside the upload, without one common top folder, in Unicode NFC
  (e.g. "cat/001.png"); class names are sorted.

One module per concern: `archive` (the ZIP's records, paths, sizes and ratios), `folder` (the
walk of a plain folder), `files` (what both give, and the byte limits), `labels` (class folders
or labels.csv, names, class counts) and `pixels` (decoding, size and colour).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .. import limits
from ..core import DataError, ImageSet
from .archive import open_zip, zip_files
from .files import File
from .folder import folder_files
from .labels import check_classes, label_files
from .pixels import decode_all, stack

__all__ = ["build", "load_upload"]
SHOW = 50  # names kept in meta["skipped"] / meta["ignored"]


def load_upload(source: str | os.PathLike | BinaryIO) -> ImageSet:
    """A labelled image set from a ZIP file (path or binary file object, e.g. an uploaded
    file) or from a folder. Raises DataError, with one sentence saying what is wrong and what
    to do, for anything it cannot use."""
    if hasattr(source, "read"):
        return load_zip(source, Path(getattr(source, "name", None) or "upload.zip").name)
    path = Path(source)
    if path.is_dir():
        files, ignored = folder_files(path)
        return build(files, ignored, f"folder {path.name}")
    if not path.is_file():
        raise DataError(f"{path} does not exist: give the path of a ZIP file or a folder")
    try:
        with open(path, "rb") as f:
            return load_zip(f, path.name)
    except OSError as e:
        raise DataError(f"cannot read {path.name}: {e.strerror or e}") from None


def load_zip(f: BinaryIO, name: str) -> ImageSet:
    archive, size = open_zip(f, name)
    with archive:
        return build(zip_files(archive, size, name), [], f"ZIP {name}")


def build(files: list[File], ignored: list[str], origin: str) -> ImageSet:
    """Label the files (class folders or labels.csv), decode and resize them, check classes."""
    layout, labelled, left_out = label_files(files)
    ignored = ignored + left_out
    check_classes(Counter(label for _, label in labelled), Counter(), origin)

    images, labels, ids, skipped, sizes = decode_all(labelled)
    check_classes(Counter(labels), Counter(label for _, label in skipped), origin)
    classes = sorted(set(labels))
    stacked = stack(images)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    height, width = stacked.shape[1:3]
    n_resized = sum(size != (width, height) for size in sizes)
    meta = {"upload": origin, "layout": layout,
            "resized_to": [width, height] if n_resized else None, "n_resized": n_resized,
            "original_sizes": {f"{w}x{h}": n for (w, h), n in Counter(sizes).most_common(10)},
            "skipped": sorted(name for name, _ in skipped)[:SHOW], "n_skipped": len(skipped),
            "ignored": sorted(ignored)[:SHOW], "n_ignored": len(ignored)}
    return ImageSet(stacked[order], np.array([classes.index(labels[i]) for i in order], np.int64),
                    classes, [ids[i] for i in order], describe(origin, meta, stacked, classes),
                    meta)


def describe(origin: str, meta: dict, stacked: np.ndarray, classes: list[str]) -> str:
    """The source sentence the app shows, stating every change made to the upload."""
    n, height, width, channels = stacked.shape
    text = (f"{origin}: {n:,} images in {len(classes)} classes ({meta['layout']}), "
            f"{width}×{height} px, {'grayscale' if channels == 1 else 'colour'}")
    if meta["n_resized"]:
        text += (f"; {meta['n_resized']:,} resized to {width}×{height} px (the most common size"
                 f", sides at most {limits.MAX_SIDE} px)")
    if meta["n_skipped"]:
        text += f"; {meta['n_skipped']:,} unreadable images skipped"
    if meta["n_ignored"]:
        text += f"; {meta['n_ignored']:,} other files ignored"
    return text
