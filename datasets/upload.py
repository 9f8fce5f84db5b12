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
"""
from __future__ import annotations

import csv
import io
import os
import re
import stat
import unicodedata
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, ImageOps

from . import limits
from .core import DataError, ImageSet

Image.MAX_IMAGE_PIXELS = limits.MAX_PIXELS  # Pillow's own decompression-bomb guard
LABELS_CSV = "labels.csv"
JUNK_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}  # plus every name starting with "."
NOT_IMAGES = {"BUFR", "GRIB", "HDF5", "MPEG", "EPS", "WMF", "IPTC"}  # Pillow stubs / no decoder
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
SHOW = 50  # names kept in meta["skipped"] / meta["ignored"]


def image_extensions() -> set[str]:
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN and fmt not in NOT_IMAGES}


IMAGE_EXTENSIONS = image_extensions()


@dataclass(frozen=True)
class File:
    """One file of the upload: its path inside it (posix, NFC), size, and how to read it."""

    name: str
    size: int
    read: Callable[[], bytes]


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


# --- sources: a ZIP archive or a folder, each checked before any file is read --------------


def load_zip(f: BinaryIO, name: str) -> ImageSet:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size == 0:
        raise DataError(f"{name} is empty (0 bytes): upload the ZIP file again")
    if size > limits.MAX_ARCHIVE_BYTES:
        raise DataError(f"{name} is {human(size)}, more than the limit of "
                        f"{human(limits.MAX_ARCHIVE_BYTES)}: upload fewer or smaller images")
    entries = declared_entries(f)
    if entries is not None and entries > limits.MAX_MEMBERS:
        raise DataError(f"{name} holds {entries:,} entries, more than the limit of "
                        f"{limits.MAX_MEMBERS:,}: upload fewer images")
    try:
        archive = zipfile.ZipFile(f)
    except Exception as e:  # BadZipFile, but hostile bytes also raise OSError, ValueError, ...
        raise DataError(f"{name} is not a ZIP archive, or it is truncated or damaged ({e}): "
                        "create it again with your system's 'compress to ZIP'") from None
    with archive:
        return build(zip_files(archive, size, name), [], f"ZIP {name}")


def declared_entries(f: BinaryIO) -> int | None:
    """The entry count in the end-of-central-directory record, read before zipfile builds an
    object per entry; None when there is no such record (zipfile then refuses the file)."""
    try:
        end = zipfile._EndRecData(f)  # zipfile's own reader of that record
        return int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else None
    except Exception:
        return None
    finally:
        f.seek(0)


def zip_files(archive: zipfile.ZipFile, archive_bytes: int, name: str) -> list[File]:
    """The archive's files, after checking every entry of its central directory."""
    infos = archive.infolist()
    if not infos:
        raise DataError(f"{name} is an empty ZIP archive: put class folders of images in it")
    if len(infos) > limits.MAX_MEMBERS:
        raise DataError(f"{name} holds {len(infos):,} entries, more than the limit of "
                        f"{limits.MAX_MEMBERS:,}: upload fewer images")
    files = []
    for info in infos:
        path = safe_member_path(info)
        if info.flag_bits & 0x1:
            raise DataError(f"{name} is encrypted (password-protected): create the ZIP "
                            "again without a password")
        if info.compress_type not in ZIP_METHODS:
            raise DataError(f"{name} uses a compression method this tool cannot read (number "
                            f"{info.compress_type}, for {path}): create the ZIP again with "
                            "standard (Deflate) compression")
        if not path or info.filename.endswith(("/", "\\")):  # a folder entry
            continue
        check_ratio(info.file_size, info.compress_size, f"{name} is refused: {path}")
        files.append(File(path, info.file_size, partial(read_member, archive, info, path)))
    check_ratio(check_sizes(files, name), archive_bytes, f"{name} is refused: the whole archive")
    return files


def check_ratio(unpacked: int, packed: int, what: str) -> None:
    ratio = unpacked / max(packed, 1)
    if unpacked > limits.RATIO_CHECK_MIN_BYTES and ratio > limits.MAX_COMPRESSION_RATIO:
        raise DataError(f"{what} expands {ratio:,.0f}-fold, more than the limit of "
                        f"{limits.MAX_COMPRESSION_RATIO} (a ZIP bomb?)")


def safe_member_path(info: zipfile.ZipInfo) -> str:
    """The entry's path, or a DataError for anything that could point outside the archive."""
    raw = info.filename
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        unsafe(raw, "it is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        unsafe(raw, "it is not a regular file")
    path = unicodedata.normalize("NFC", raw.replace("\\", "/"))
    if path.startswith("/"):
        unsafe(raw, "it is an absolute path")
    if re.match(r"[A-Za-z]:", path):
        unsafe(raw, "it starts with a drive letter")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        unsafe(raw, "it climbs out of the archive with '..'")
    if len(path) > limits.MAX_PATH_CHARS:
        raise DataError(f"a path in the archive is {len(path):,} characters long, more than the "
                        f"limit of {limits.MAX_PATH_CHARS:,}: use shorter folder and file names")
    return "/".join(parts)


def unsafe(raw: str, why: str):
    raise DataError(f"the archive is refused because of the entry {raw[:80]!r}: {why}. Create "
                    "the ZIP from inside your data folder, with plain files and folders only")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> bytes:
    try:
        with archive.open(info) as member:
            data = member.read(limits.MAX_FILE_BYTES + 1)
    except Exception as e:  # bad CRC, bad local header, zlib/lzma errors, truncation, ...
        raise DataError(f"the archive is damaged: {path} cannot be read ({e}); create the ZIP "
                        "again") from None
    if len(data) != info.file_size:
        raise DataError(f"the archive is damaged: {path} does not have the size its directory "
                        "states; create the ZIP again")
    return data


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


# --- which file is which class -----------------------------------------------------------


def build(files: list[File], ignored: list[str], origin: str) -> ImageSet:
    """Label the files (class folders or labels.csv), decode and resize them, check classes."""
    junk = [f for f in files if is_junk(f.name)]
    files = [f for f in files if not is_junk(f.name)]
    ignored += [f.name for f in junk]
    files = strip_top_folder(files)
    by_name = {f.name: f for f in files}
    if LABELS_CSV in by_name:
        layout = LABELS_CSV
        labelled = read_labels_csv(by_name[LABELS_CSV], by_name)
    else:
        layout = "class folders"
        labelled = class_folders(files)
    used = {f.name for f, _ in labelled} | {LABELS_CSV}
    ignored += [f.name for f in files if f.name not in used]
    check_classes(Counter(label for _, label in labelled), Counter(), origin)

    images, labels, ids, skipped, sizes = decode_all(labelled)
    check_classes(Counter(labels), Counter(label for _, label in skipped), origin)
    classes = sorted(set(labels))
    channels = 1 if all(im.ndim == 2 for im in images) else 3
    stack = np.stack([im if im.ndim == 3 or channels == 1 else np.repeat(im[..., None], 3, 2)
                      for im in images])
    if channels == 1:
        stack = stack[..., None]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    height, width = stack.shape[1:3]
    n_resized = sum(size != (width, height) for size in sizes)
    meta = {"upload": origin, "layout": layout,
            "resized_to": [width, height] if n_resized else None, "n_resized": n_resized,
            "original_sizes": {f"{w}x{h}": n for (w, h), n in Counter(sizes).most_common(10)},
            "skipped": sorted(name for name, _ in skipped)[:SHOW], "n_skipped": len(skipped),
            "ignored": sorted(ignored)[:SHOW], "n_ignored": len(ignored)}
    return ImageSet(stack[order], np.array([classes.index(labels[i]) for i in order], np.int64),
                    classes, [ids[i] for i in order], describe(origin, meta, stack, classes),
                    meta)


def describe(origin: str, meta: dict, stack: np.ndarray, classes: list[str]) -> str:
    """The source sentence the app shows, stating every change made to the upload."""
    n, height, width, channels = stack.shape
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


def is_junk(path: str) -> bool:
    """System files that archivers and file managers add: ignored without a word."""
    return any(part.startswith(".") or part.lower() in JUNK_NAMES for part in path.split("/"))


def is_image_name(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_EXTENSIONS


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
    except csv.Error as e:
        raise DataError(f"labels.csv cannot be read as CSV ({e}): save it as a plain CSV file "
                        "with the columns filename,label") from None
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


# --- pixels ------------------------------------------------------------------------------


def decode_all(labelled: list[tuple[File, str]]):
    """Two passes: headers first (sizes, bomb check), then decode and resize to one size."""
    sizes, skipped = {}, []
    for file, label in labelled:
        try:
            sizes[file.name] = header_size(file.read(), file.name)
        except UnreadableImage:
            skipped.append((file.name, label))
    if not sizes:
        return [], [], [], skipped, []
    target = target_size(list(sizes.values()))
    images, labels, ids = [], [], []
    for file, label in labelled:
        if file.name not in sizes:
            continue
        try:
            images.append(decode(file.read(), file.name, target))
        except UnreadableImage:
            skipped.append((file.name, label))
            del sizes[file.name]
            continue
        labels.append(label)
        ids.append(file.name)
    return images, labels, ids, skipped, [sizes[i] for i in ids]


class UnreadableImage(Exception):
    pass


def open_image(data: bytes, name: str) -> Image.Image:
    """Open (header only) or raise: DataError for a decompression bomb, UnreadableImage for
    anything Pillow cannot identify."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        image = None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImage(name) from e
    if image is None or image.width * image.height > limits.MAX_PIXELS:
        raise DataError(f"{name} is refused: its header declares more than "
                        f"{limits.MAX_PIXELS:,} pixels (a decompression bomb?); use smaller "
                        "images")
    return image


def header_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) as shown, i.e. after the JPEG EXIF rotation, without decoding."""
    image = open_image(data, name)
    width, height = image.size
    if image.format in ("JPEG", "MPO"):
        try:
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
        except Exception:
            pass
    return width, height


def target_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The most common (width, height) — ties go to the larger — shrunk to fit MAX_SIDE."""
    (width, height), _ = max(Counter(sizes).items(),
                             key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0]))
    scale = min(1.0, limits.MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def decode(data: bytes, name: str, size: tuple[int, int]) -> np.ndarray:
    """Pixels as uint8, H×W (grayscale) or H×W×3 (colour), resized to size = (width, height)."""
    image = open_image(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if image.format == "JPEG":
                image.draft(None, (max(size), max(size)))  # decode big JPEGs at a lower scale
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a broken EXIF block must not lose a good image
                pass
            image = to_8bit(image)
            if image.size != size:
                image = image.resize(size, Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).copy()
    except Exception as e:  # truncated or corrupt data, unsupported mode, ...
        raise UnreadableImage from e


def to_8bit(image: Image.Image) -> Image.Image:
    """Mode L (grayscale) or RGB: alpha laid over white, 16-bit and float scaled to 8 bits."""
    gray = image.mode in GRAY_MODES or (image.mode in ("P", "PA") and gray_palette(image))
    if image.mode.startswith("I") or image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        values = np.clip(values, 0, 65535)
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 257
        return Image.fromarray(np.rint(values).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("L" if gray else "RGB")


def gray_palette(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())
