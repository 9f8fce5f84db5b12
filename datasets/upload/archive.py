"""A ZIP archive as an upload, checked from its end record and central directory before any
member is read: file size, entry count, member paths, sizes, compression ratios, encryption and
compression method. Members are read into memory through `zipfile`, never extracted."""
from __future__ import annotations

import os
import re
import stat
import struct
import unicodedata
import zipfile
from functools import partial
from typing import BinaryIO

from .. import limits
from ..core import DataError
from .files import File, check_sizes, human

ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}

# The records at the end of a ZIP file (PKWARE APPNOTE.TXT 4.3.14 to 4.3.16), little-endian.
# End of central directory: signature, this disk, the directory's disk, entries on this disk,
# entries in total, directory size, directory offset, comment length; then the comment.
EOCD, EOCD_SIGNATURE = struct.Struct("<4s4H2LH"), b"PK\x05\x06"
# ZIP64 end of central directory locator: signature, the ZIP64 record's disk, its offset, disks.
LOCATOR, LOCATOR_SIGNATURE = struct.Struct("<4sLQL"), b"PK\x06\x07"
# ZIP64 end of central directory record: signature, record size, versions made by and needed,
# this disk, the directory's disk, entries on this disk, entries in total, size, offset.
EOCD64, EOCD64_SIGNATURE = struct.Struct("<4sQ2H2L4Q"), b"PK\x06\x06"
MAX_COMMENT = 0xFFFF
TAIL = EOCD64.size + LOCATOR.size + EOCD.size + MAX_COMMENT  # all that declared_entries reads


def open_zip(f: BinaryIO, name: str) -> tuple[zipfile.ZipFile, int]:
    """The archive and its size in bytes, once the file's size and declared entry count are
    within the limits."""
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
        return zipfile.ZipFile(f), size
    except Exception:  # BadZipFile, but hostile bytes also raise OSError, ValueError, ...
        raise DataError(f"{name} is not a ZIP archive, or it is truncated or damaged: create "
                        "it again with your system's 'compress to ZIP'") from None


def declared_entries(f: BinaryIO) -> int | None:
    """The entry count in the end-of-central-directory record, read before zipfile builds an
    object per entry; None when there is no such record (zipfile then refuses the file).
    Reads only the file's last TAIL bytes."""
    try:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL))
        return entries_in_tail(f.read(TAIL))
    except (OSError, ValueError):
        return None
    finally:
        f.seek(0)


def entries_in_tail(tail: bytes) -> int | None:
    """The total entry count declared by the records at the end of a ZIP file, found where
    zipfile finds them; None when there is no end record. Never raises, whatever the bytes.

    The end record ends the file when it has no comment; otherwise it is the last signature
    in the final 22 + 65,535 bytes. Its 16-bit count is 0xFFFF when the count does not fit;
    a ZIP64 locator just before it then leads to the ZIP64 record just before that, which holds
    the 64-bit count. Like zipfile, the ZIP64 count is used whenever both records are there."""
    end = len(tail) - EOCD.size
    if end >= 0 and tail.startswith(EOCD_SIGNATURE, end) and tail.endswith(b"\0\0"):
        at = end
    else:
        at = tail.rfind(EOCD_SIGNATURE, max(0, end - MAX_COMMENT))
    if at < 0 or at + EOCD.size > len(tail):
        return None
    entries = EOCD.unpack_from(tail, at)[4]
    locator = at - LOCATOR.size
    record = locator - EOCD64.size
    if (record >= 0 and tail[locator:locator + 4] == LOCATOR_SIGNATURE
            and tail[record:record + 4] == EOCD64_SIGNATURE):
        entries = EOCD64.unpack_from(tail, record)[7]
    return entries


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
    except Exception:  # bad CRC, bad local header, zlib/lzma errors, truncation, ...
        raise DataError(f"the archive is damaged: {path} cannot be read; create the ZIP "
                        "again") from None
    if len(data) != info.file_size:
        raise DataError(f"the archive is damaged: {path} does not have the size its directory "
                        "states; create the ZIP again")
    return data
