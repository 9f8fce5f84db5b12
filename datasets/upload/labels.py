"""Which file is which class: class folders or a labels.csv, checked names, class counts."""
from __future__ import annotations

import csv
import io
import unicodedata
from collections import Counter
from pathlib import PurePosixPath

from .. import limits
from ..core import DataError
from .files import File
from .pixels import IMAGE_EXTENSIONS

LABELS_CSV = "labels.csv"
JUNK_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}  # plus every name starting with "."


def is_junk(path: str) -> bool:
    """System files that archivers and file managers add: ignored without a word."""
    return any(part.startswith(".") or part.lower() in JUNK_NAMES for part in path.split("/"))


def is_image_name(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_EXTENSIONS


def label_files(files: list[File]) -> tuple[str, list[tuple[File, str]], list[str]]:
    """The layout ("labels.csv" or "class folders"), each image with its label, and the names
    of the files left out (system files, and files neither in a class folder nor listed)."""
    junk = [f.name for f in files if is_junk(f.name)]
    files = strip_top_folder([f for f in files if not is_junk(f.name)])
    by_name = {f.name: f for f in files}
    if LABELS_CSV in by_name:
        layout = LABELS_CSV
        labelled = read_labels_csv(by_name[LABELS_CSV], by_name)
    else:
        layout = "class folders"
        labelled = class_folders(files)
    used = {f.name for f, _ in labelled} | {LABELS_CSV}
    return layout, labelled, junk + [f.name for f in files if f.name not in used]


def strip_top_folder(files: list[File]) -> list[File]:
    """Drop folders that hold everything (`photos/cat/1.png` → `cat/1.png`), as long as
    class folders or a labels.csv remain below them."""
    while True:
        wanted = [f.name for f in files
                  if is_image_name(f.name) or PurePosixPath(f.name).name == LABELS_CSV]
        tops = {name.split("/", 1)[0] for name in wanted}
        if len(tops) != 1 or not all("/" in name for name in wanted):
            return files
        below = [name.split("/", 1)[1] for name in wanted]
        if LABELS_CSV not in below and not any("/" in name for name in below):
            return files
        prefix = tops.pop() + "/"
        files = [File(f.name[len(prefix):], f.size, f.read) for f in files
                 if f.name.startswith(prefix)]


def class_folders(files: list[File]) -> list[tuple[File, str]]:
    """Images labelled by their first folder (`cat/001.png`, `cat/2019/002.png` → cat)."""
    images = [f for f in files if is_image_name(f.name)]
    labelled = [(f, f.name.split("/", 1)[0]) for f in images if "/" in f.name]
    if images and not labelled:
        raise DataError("the images are not in class folders: put each class in its own "
                        "folder (cat/001.png, dog/001.png, ...) or add a labels.csv with the "
                        "columns filename,label")
    for f, label in labelled:
        check_name(f.name)
    return labelled


def read_labels_csv(table: File, by_name: dict[str, File]) -> list[tuple[File, str]]:
    """`filename,label` rows, checked line by line; other columns are ignored."""
    try:
        text = table.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"labels.csv is not UTF-8 text (byte {e.start + 1} cannot be read): "
                        "save it as 'CSV UTF-8'") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        raise DataError("labels.csv cannot be read as CSV: save it as a plain CSV file with "
                        "the columns filename,label") from None
    if not rows:
        raise DataError("labels.csv is empty: it needs a header line 'filename,label' and one "
                        "line per image")
    header = [cell.strip().lower() for cell in rows[0]]
    if header.count("filename") != 1 or header.count("label") != 1:
        raise DataError(f"labels.csv needs a header line with the columns filename,label; its "
                        f"first line is {','.join(rows[0])[:100]!r}")
    at_file, at_label = header.index("filename"), header.index("label")
    labelled, line_of = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"labels.csv line {line} has {len(row)} fields but the header has "
                            f"{len(header)}: quote names that contain commas")
        name = unicodedata.normalize("NFC", row[at_file].strip().replace("\\", "/"))
        name = name[2:] if name.startswith("./") else name
        label = unicodedata.normalize("NFC", row[at_label].strip())
        if not name:
            raise DataError(f"labels.csv line {line} has an empty filename: fill it in or "
                            "delete the line")
        if not label:
            raise DataError(f"labels.csv line {line} gives {name!r} an empty label: give every "
                            "image a label, or delete its line")
        if name in line_of:
            raise DataError(f"labels.csv lists {name!r} twice (lines {line_of[name]} and "
                            f"{line}): keep one line per image")
        check_name(name)
        check_name(label, "label")
        if "/" in label or "\\" in label:
            raise DataError(f"labels.csv line {line}: the label {label!r} contains a slash: "
                            "use labels without '/' or '\\'")
        line_of[name] = line
        if name in by_name:
            labelled.append((by_name[name], label))
    missing = [name for name in line_of if name not in by_name]
    if missing:
        raise DataError(f"labels.csv names {len(missing)} file(s) that are not in the upload, "
                        f"e.g. {missing[0]!r}: add them, or delete their lines (file names are "
                        "relative to the folder holding labels.csv)")
    return labelled


def check_name(name: str, what: str = "name") -> None:
    """Names become sample ids and folder names: printable, not too long, no edge spaces."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise DataError(f"the {what} {name[:80]!r} contains control characters: rename it")
    if name != name.strip():
        raise DataError(f"the {what} {name[:80]!r} starts or ends with a space: rename it")
    if max(len(part) for part in name.split("/")) > limits.MAX_NAME_CHARS:
        raise DataError(f"the {what} {name[:40]!r}… is longer than {limits.MAX_NAME_CHARS} "
                        "characters: use a shorter name")


def check_classes(counts: Counter, unreadable: Counter, origin: str) -> None:
    """At least MIN_CLASSES classes, at most MAX_CLASSES, each with MIN_IMAGES_PER_CLASS."""
    classes = set(counts) | set(unreadable)
    if not counts:
        raise DataError(f"{origin} holds no readable images: upload PNG or JPEG files in class "
                        "folders (cat/001.png, dog/001.png, ...)")
    if len(classes) < limits.MIN_CLASSES:
        raise DataError(f"{origin} has only one class ({next(iter(classes))!r}): a classifier "
                        f"needs at least {limits.MIN_CLASSES} classes, each in its own folder")
    if len(classes) > limits.MAX_CLASSES:
        raise DataError(f"{origin} has {len(classes):,} classes, more than the limit of "
                        f"{limits.MAX_CLASSES}: check that each class has one folder (or label)")
    small = sorted(c for c in classes if counts[c] < limits.MIN_IMAGES_PER_CLASS)
    if small:
        c, others = small[0], f" (and {len(small) - 1} more classes)" if len(small) > 1 else ""
        note = f", {unreadable[c]} more could not be read" if unreadable[c] else ""
        raise DataError(f"class {c!r}{others} has only {counts[c]} readable image(s){note}: "
                        f"give every class at least {limits.MIN_IMAGES_PER_CLASS} images")

