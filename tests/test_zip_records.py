"""The end-of-central-directory reader: the entry count it finds is the one zipfile finds, on
plain, commented and ZIP64 archives; it gives None for bytes without such a record and never
raises; a forged count over the limit refuses the upload before zipfile reads the directory."""
import io
import random
import struct
import zipfile

import pytest
from helpers import refused, two_classes, zip_bytes

from datasets import limits
from datasets.upload.archive import TAIL, declared_entries, entries_in_tail


def count(data: bytes) -> int | None:
    return declared_entries(io.BytesIO(data))


def zipfile_count(data: bytes) -> int:
    return len(zipfile.ZipFile(io.BytesIO(data)).infolist())


def with_comment(data: bytes, comment: bytes) -> bytes:
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.comment = comment
    return out.getvalue()


def test_plain_zip():
    data = zip_bytes(two_classes())
    assert count(data) == zipfile_count(data) == 4


@pytest.mark.parametrize("comment", [b"made by hand", b"x" * 0xFFFF])
def test_zip_with_archive_comment(comment):
    data = with_comment(zip_bytes(two_classes(**{"b/2.png": b"x"})), comment)
    assert zipfile.ZipFile(io.BytesIO(data)).comment == comment
    assert count(data) == zipfile_count(data) == 5


def test_a_signature_inside_the_comment_wins_as_in_zipfile():
    fake = b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, 7, 7, 0, 0, 0)  # 7 entries, in 0 bytes
    data = with_comment(zip_bytes(two_classes()), b"note " + fake)
    assert count(data) == 7
    assert zipfile_count(data) == 0  # zipfile read the fake record too: an empty directory


def test_only_the_end_of_the_file_is_read():
    members = {f"{i}": bytes(1000) for i in range(200)}
    data = with_comment(zip_bytes(members, zipfile.ZIP_STORED), b"c" * 0xFFFF)
    assert len(data) > 2 * TAIL

    class Recorder(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            chunk = super().read(n)
            self.read_bytes += len(chunk)
            return chunk

    f = Recorder(data)
    assert declared_entries(f) == 200
    assert f.read_bytes <= TAIL and f.tell() == 0


@pytest.mark.parametrize("data", [
    b"", b"PK\x05\x06", b"PK\x05\x06" + bytes(17), b"not a zip at all\n" * 100,
    bytes(range(256)) * 300,
])
def test_garbage_gives_none(data):
    assert count(data) is None


@pytest.mark.parametrize("cut", [1, 10, 21])
def test_end_record_cut_short_gives_none(cut):
    data = zip_bytes(two_classes())
    assert count(data[:-cut]) is None


def test_random_bytes_never_raise():
    rng = random.Random(0)
    pieces = [b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"\xff\xff", bytes(8), b"\0\0"]
    for _ in range(2000):
        data = b"".join(rng.choice(pieces) if rng.random() < 0.5 else rng.randbytes(3)
                        for _ in range(rng.randrange(60)))
        result = entries_in_tail(data)
        assert result is None or 0 <= result < 2 ** 64


def zip64_by_hand(data: bytes, entries: int | None = None, locator=b"PK\x06\x07",
                  record=b"PK\x06\x06") -> bytes:
    """The archive with a ZIP64 record and locator written before its end record, which
    then says 0xFFFF entries (APPNOTE 4.3.14, 4.3.15); the ZIP64 record declares `entries`
    (default: the true count)."""
    end = data.rfind(b"PK\x05\x06")
    _, _, _, _, total, size, offset, _ = struct.unpack_from("<4s4H2LH", data, end)
    entries = total if entries is None else entries
    zip64 = struct.pack("<4sQ2H2L4Q", record, 44, 45, 45, 0, 0, entries, entries, size, offset)
    locate = struct.pack("<4sLQL", locator, 0, end, 1)
    last = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, size, offset, 0)
    return data[:end] + zip64 + locate + last


def test_zip64_records_written_by_hand():
    data = zip64_by_hand(zip_bytes(two_classes()))
    assert count(data) == zipfile_count(data) == 4
    assert count(zip64_by_hand(zip_bytes(two_classes()), entries=10**12)) == 10**12


@pytest.mark.parametrize("part", ["locator", "record"])
def test_zip64_without_its_signature_keeps_the_16_bit_count(part):
    data = zip64_by_hand(zip_bytes(two_classes()), **{part: b"PK\x00\x00"})
    assert count(data) == 0xFFFF


def test_forged_count_is_refused_before_zipfile_reads_the_directory(upload, monkeypatch):
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", None)  # reading it would crash
    data = zip_bytes(two_classes())
    forged = zip64_by_hand(data, entries=10**6)
    refused(upload(forged), "1,000,000 entries", f"limit of {limits.MAX_MEMBERS:,}")
    forged = bytearray(data)
    struct.pack_into("<2H", forged, forged.rfind(b"PK\x05\x06") + 8, 0xFFFE, 0xFFFE)
    monkeypatch.setattr(limits, "MAX_MEMBERS", 1000)
    refused(upload(bytes(forged), "16-bit.zip"), "65,534 entries", "limit of 1,000")


def test_zip64_written_by_zipfile():
    """More entries than 16 bits hold: zipfile writes the ZIP64 records itself (about 1 s)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for i in range(0x10000):
            archive.writestr(str(i), b"")
    data = out.getvalue()
    assert struct.unpack_from("<H", data, data.rfind(b"PK\x05\x06") + 10) == (0xFFFF,)
    assert count(data) == zipfile_count(data) == 0x10000
