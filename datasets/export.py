"""Export an ImageSet as a ZIP of class folders holding PNG files — the layout `load_upload`
reads — so a cleaned data set can be downloaded, inspected, and uploaded again unchanged."""
from __future__ import annotations

import io
import os
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image

from .core import ImageSet
from .storage import atomic_file
from .upload.labels import is_junk
from .upload.pixels import IMAGE_EXTENSIONS


def to_zip(data: ImageSet, target: str | os.PathLike | BinaryIO | None = None):
    """Write `<class>/<name>.png` for every image. `target` is a path (written atomically:
    temporary file, then rename; returns the Path), a binary file object (returned), or None
    (returns the ZIP as bytes, e.g. for a download button).

    Uploading the result gives back the same pixels, labels and class names: an image whose
    id is `cat/001.png` and label cat keeps that id. Other ids become file names (`/` inside
    them become subfolders, other image extensions become `.png`); class names are made safe
    as folder names (`T-shirt/top` → `T-shirt_top`); classes without images are left out."""
    if target is None:
        buffer = io.BytesIO()
        write(data, buffer)
        return buffer.getvalue()
    if hasattr(target, "write"):
        write(data, target)
        return target
    target = Path(target)
    with atomic_file(target) as tmp, open(tmp, "wb") as f:
        write(data, f)
    return target


def write(data: ImageSet, f: BinaryIO) -> None:
    folders = folder_names(data.classes)
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for name, image in zip(member_names(data, folders), data.images):
            png = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(png, "PNG")
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # same data, same bytes
            info.external_attr = 0o644 << 16
            archive.writestr(info, png.getvalue())


def member_names(data: ImageSet, folders: list[str]) -> list[str]:
    """One unique `<class folder>/<path>.png` per image, derived from its id."""
    names, taken = [], set()
    for sample_id, label in zip(data.ids, data.labels):
        folder, cls = folders[label], data.classes[label]
        rest = sample_id[len(cls) + 1:] if sample_id.startswith(cls + "/") else sample_id
        path = PurePosixPath(*[safe(part) for part in rest.split("/") if part] or ["image"])
        stem = str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else str(path)
        name, k = f"{folder}/{stem}.png", 1
        while name.lower() in taken:  # unique even on case-insensitive file systems
            k += 1
            name = f"{folder}/{stem}-{k}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def folder_names(classes: list[str]) -> list[str]:
    """Class names made safe and unique as folder names."""
    names, taken = [], set()
    for cls in classes:
        name, k = safe(cls), 1
        while name.lower() in taken:
            k += 1
            name = f"{safe(cls)}-{k}"
        taken.add(name.lower())
        names.append(name)
    return names


def safe(part: str) -> str:
    """A file or folder name that `load_upload` accepts and does not ignore as junk."""
    part = "".join("_" if c in "/\\" or unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                   for c in part).strip()[:200]
    return "_" + part if not part or is_junk(part) else part
