"""What both sources (a ZIP archive, a folder) give: a list of files, checked against the byte
limits before any of them is read."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from .. import limits
from ..core import DataError


@dataclass(frozen=True)
class File:
    """One file of the upload: its path inside it (posix, NFC), size, and how to read it."""

    name: str
    size: int
    read: Callable[[], bytes]


def human(n_bytes: int) -> str:
    return (f"{n_bytes / limits.MiB:,.1f} MiB" if n_bytes >= limits.MiB // 10
            else f"{n_bytes:,} bytes")


def check_sizes(files: list[File], name: str) -> int:
    """Refuse any one file or all of them together over the byte limits; the total."""
    for file in files:
        if file.size > limits.MAX_FILE_BYTES:
            raise DataError(f"{file.name} is {human(file.size)}, more than the limit of "
                            f"{human(limits.MAX_FILE_BYTES)} for one file: use smaller images")
    total = sum(file.size for file in files)
    if total > limits.MAX_TOTAL_BYTES:
        raise DataError(f"{name} unpacks to {human(total)}, more than the limit of "
                        f"{human(limits.MAX_TOTAL_BYTES)}: upload fewer images")
    names = Counter(file.name for file in files)
    twice = [n for n, count in names.items() if count > 1]
    if twice:
        raise DataError(f"{name} holds more than one file named {twice[0]!r}: remove the "
                        "duplicates and create the ZIP again")
    return total
