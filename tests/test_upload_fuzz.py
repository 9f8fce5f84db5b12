"""Fuzzing the upload parser: random bytes, mutated valid ZIPs and random archive contents
must give a valid ImageSet or a DataError — never any other exception.
A longer, randomised search: FUZZ_EXAMPLES=5000 pytest tests/test_upload_fuzz.py"""
import io
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import png, zip_bytes

from datasets import DataError, ImageSet
from datasets.upload import load_upload

EXAMPLES = os.environ.get("FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(EXAMPLES or 150), deadline=None, derandomize=not EXAMPLES,
                database=None, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "folders": zip_bytes({f"{c}/{i}.png": png(color=i, mode="RGB" if c == "b" else "L")
                          for c in "ab" for i in range(2)}),
    "labels.csv": zip_bytes({"labels.csv": b"filename,label\n1.png,a\n2.png,a\n3.png,b\n4.png,b\n",
                             **{f"{i}.png": png((6, 4), color=i) for i in range(1, 5)}}),
    "stored": zip_bytes({f"{c}/{i}.bmp": png(fmt="BMP", color=i) for c in "ab" for i in range(2)},
                        zipfile.ZIP_STORED),
}


def load_or_refuse(data: bytes):
    """The property: an ImageSet whose parts agree, or a one-line DataError."""
    try:
        result = load_upload(io.BytesIO(data))
    except DataError as e:
        assert str(e) and "\n" not in str(e)
        return None
    assert isinstance(result, ImageSet)
    assert result.images.dtype == np.uint8 and len(result.ids) == len(result) >= 4
    assert len(result.classes) >= 2 and result.classes == sorted(result.classes)
    return result


def test_the_valid_seeds_load():
    for data in VALID.values():
        assert load_or_refuse(data) is not None


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    load_or_refuse(data)


def mutate(data: bytearray, draw) -> bytes:
    """Up to 8 random bit flips, byte overwrites, cuts, insertions and deletions."""
    for _ in range(draw.draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw.draw(st.sampled_from(["flip", "byte", "cut", "insert", "delete"]))
        at = draw.draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw.draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x10]))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw.draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:at + draw.draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_mutated_valid_zips(which, draw):
    load_or_refuse(mutate(bytearray(VALID[which]), draw))


IMAGES = {name: png((9, 7), mode, color, fmt) for name, mode, color, fmt in [
    ("l.png", "L", 5, "PNG"), ("rgba.png", "RGBA", (1, 2, 3, 4), "PNG"),
    ("x.jpg", "RGB", 9, "JPEG"),
    ("x.gif", "P", 3, "GIF"), ("x.bmp", "RGB", 7, "BMP"), ("x.tif", "I;16", 999, "TIFF"),
    ("x.webp", "RGB", 1, "WEBP"), ("x.ico", "RGBA", 8, "ICO")]}


@FUZZ
@given(st.sampled_from(sorted(IMAGES)), st.data())
def test_mutated_images_inside_a_valid_zip(name, draw):
    """The archive is intact, so the image decoders themselves get the damaged bytes."""
    broken = mutate(bytearray(IMAGES[name]), draw)
    members = {f"{c}/{i}.png": png() for c in "ab" for i in range(2)}
    data = load_or_refuse(zip_bytes({**members, f"a/{name}": broken}))
    if data is not None:
        assert len(data) + data.meta["n_skipped"] == 5


NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
CONTENT = st.sampled_from([png(), png(color=200), png((3, 9), mode="RGBA"), b"", b"not an image",
                           png(fmt="GIF"), b"filename,label\n"])


@pytest.mark.filterwarnings("ignore:Duplicate name")
@FUZZ
@given(st.lists(st.tuples(st.lists(NAMES, min_size=1, max_size=3).map("/".join), CONTENT),
                max_size=12))
def test_random_archive_contents(members):
    load_or_refuse(zip_bytes(dict(members)))
