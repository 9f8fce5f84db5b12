"""A plain folder as an upload: its regular files, walked in a fixed order."""
from __future__ import annotations

import os
import unicodedata
from functools import partial
from pathlib import Path

from .. import limits
from ..core import DataError
from .files import File, check_sizes


def folder_files(root: Path) -> tuple[list[File], list[str]]:
    """The folder's regular files (symbolic links are ignored, never followed)."""
    files, ignored = [], []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for entry in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            full = Path(folder, entry)
            path = unicodedata.normalize("NFC", full.relative_to(root).as_posix())
            if full.is_symlink() or not full.is_file():
                ignored.append(path)
                continue
            files.append(File(path, full.stat().st_size, partial(read_file, full, path)))
            if len(files) > limits.MAX_MEMBERS:
                raise DataError(f"{root.name} holds more than {limits.MAX_MEMBERS:,} files, the "
                                "limit: use a smaller folder")
    check_sizes(files, root.name)
    return files, ignored


def read_file(full: Path, path: str) -> bytes:
    try:
        with open(full, "rb") as f:
            return f.read(limits.MAX_FILE_BYTES + 1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
