"""Uploads: every bad input of issue 5 gets a DataError that says what to do, and loading
never writes a file anywhere. All bad files are generated here."""
import io
import os
import stat
import unicodedata
import zipfile

import numpy as np
import pytest
from PIL import Image

from datasets import limits
from datasets.export import to_zip
from helpers import (bomb_png, central_directory_patch, load_without_writing, png, refused,
                     two_classes, zip_bytes)

# --- the good cases --------------------------------------------------------------------------


def test_zip_of_class_folders(upload):
    data = load_without_writing(upload(two_classes()))
    assert data.images.shape == (4, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.classes == ["a", "b"]
    assert data.ids == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[3, 0, 0, 0] == 110
    assert data.meta["layout"] == "class folders" and data.meta["resized_to"] is None
    assert "4 images in 2 classes" in data.source and "8×8 px" in data.source


def test_one_top_folder_is_dropped_and_member_order_does_not_matter(upload):
    members = {f"my photos/{k}": v for k, v in two_classes().items()}
    data = load_without_writing(upload(members))
    reordered = load_without_writing(upload(dict(reversed(list(members.items()))), "r.zip"))
    assert data.ids == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert reordered.fingerprint() == data.fingerprint()


def test_plain_folder_of_class_folders(tmp_path):
    for name, content in two_classes().items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    os.symlink("/etc/passwd", tmp_path / "a" / "link.png")  # never followed
    data = load_without_writing(tmp_path)
    assert data.ids == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert data.meta["ignored"] == ["a/link.png"]


def test_binary_file_object_is_accepted():
    data = load_without_writing(io.BytesIO(zip_bytes(two_classes())))
    assert len(data) == 4


def test_any_common_format_and_nested_folders(upload):
    members = {"a/x.jpg": png(fmt="JPEG", color=50), "a/y.bmp": png(fmt="BMP"),
               "b/2019/x.gif": png(fmt="GIF"), "b/z.webp": png(fmt="WEBP"),
               "b/t.tiff": png(fmt="TIFF")}
    data = load_without_writing(upload(members))
    assert data.ids == ["a/x.jpg", "a/y.bmp", "b/2019/x.gif", "b/t.tiff", "b/z.webp"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    assert abs(int(data.images[0, 4, 4, 0]) - 50) <= 2  # JPEG is lossy


def test_mixed_sizes_resize_to_the_most_common_size(upload):
    members = two_classes(**{"a/big.png": png((20, 10)), "b/small.png": png((4, 4))})
    data = load_without_writing(upload(members))
    assert data.shape == (8, 8, 1)
    assert data.meta["resized_to"] == [8, 8] and data.meta["n_resized"] == 2
    assert "2 resized to 8×8 px" in data.source


def test_large_images_are_capped_at_max_side_keeping_aspect(upload):
    members = {f"{c}/{i}.png": png((200, 100)) for c in "ab" for i in range(2)}
    data = load_without_writing(upload(members))
    assert data.shape == (limits.MAX_SIDE // 2, limits.MAX_SIDE, 1)
    assert data.meta["resized_to"] == [limits.MAX_SIDE, limits.MAX_SIDE // 2]


def test_exif_rotation_is_applied(upload):
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    Image.new("L", (16, 8), 0).save(out, "JPEG", exif=exif)
    members = {"a/0.jpg": out.getvalue(), "a/1.jpg": out.getvalue(),
               "b/0.png": png((8, 16)), "b/1.png": png((8, 16))}
    data = load_without_writing(upload(members))
    assert data.shape == (16, 8, 1) and data.meta["n_resized"] == 0


def test_all_grayscale_modes_keep_one_channel(upload):
    sixteen = Image.fromarray(np.full((8, 8), 257 * 100, dtype=np.uint16))
    assert sixteen.mode == "I;16"
    out = io.BytesIO()
    sixteen.save(out, "PNG")
    gray_palette = io.BytesIO()
    Image.new("L", (8, 8), 77).convert("P").save(gray_palette, "PNG")
    members = {"a/l.png": png(), "a/la.png": png(mode="LA", color=(50, 255)),
               "a/one.png": png(mode="1", color=1), "b/16.png": out.getvalue(),
               "b/p.png": gray_palette.getvalue()}
    data = load_without_writing(upload(members))
    assert data.shape == (8, 8, 1)
    pixel = dict(zip(data.ids, data.images[:, 0, 0, 0].tolist()))
    assert pixel == {"a/l.png": 0, "a/la.png": 50, "a/one.png": 255, "b/16.png": 100,
                     "b/p.png": 77}


def test_any_colour_image_makes_every_image_rgb(upload):
    members = {"a/rgb.png": png(mode="RGB", color=(10, 20, 30)),
               "a/rgba.png": png(mode="RGBA", color=(10, 20, 30, 0)),
               "a/p.png": png(mode="P", color=3),
               "b/cmyk.jpg": png(mode="CMYK", color=(0, 0, 0, 0), fmt="JPEG"),
               "b/gray.png": png(color=40)}
    data = load_without_writing(upload(members))
    assert data.shape == (8, 8, 3)
    pixel = dict(zip(data.ids, data.images[:, 0, 0].tolist()))
    assert pixel["a/rgb.png"] == [10, 20, 30]
    assert pixel["a/rgba.png"] == [255, 255, 255]  # fully transparent → white
    assert pixel["b/gray.png"] == [40, 40, 40]
    assert all(abs(v - 255) <= 2 for v in pixel["b/cmyk.jpg"])  # no ink → white


def test_labels_csv(upload):
    members = {"labels.csv": "\ufefffilename,label,note\nimg/1.png,cat,x\n./img/2.png , cat,\n"
                             "img/3.png,dog,\nimg/4.png,dog,\n".encode(),
               **{f"img/{i}.png": png(color=i) for i in range(1, 6)}}
    data = load_without_writing(upload({f"top/{k}": v for k, v in members.items()}))
    assert data.classes == ["cat", "dog"] and data.meta["layout"] == "labels.csv"
    assert data.ids == ["img/1.png", "img/2.png", "img/3.png", "img/4.png"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.meta["ignored"] == ["img/5.png"]  # not listed in labels.csv


def test_names_with_spaces_unicode_and_long_names(upload):
    long_name = "x" * 200 + ".png"
    decomposed = unicodedata.normalize("NFD", "été")
    members = {f"chat noir/{decomposed} 1.png": png(), "chat noir/猫 2.png": png(),
               f"b/{long_name}": png(), "b/ok.png": png()}
    data = load_without_writing(upload(members))
    assert data.classes == ["b", "chat noir"]
    assert "chat noir/été 1.png" in data.ids  # NFC, whatever the archiver wrote
    assert f"b/{long_name}" in data.ids


def test_junk_and_non_image_files_are_ignored_and_listed(upload):
    members = two_classes(**{".DS_Store": b"\0\0\0\1Bud1", "__MACOSX/a/._0.png": b"\0\5\26\7",
                             "a/Thumbs.db": b"\xd0\xcf", "README.txt": b"hello",
                             "b/notes.txt": b"notes", "a/sub/": b""})
    data = load_without_writing(upload(members))
    assert len(data) == 4 and data.meta["n_skipped"] == 0
    assert data.meta["ignored"] == [".DS_Store", "README.txt", "__MACOSX/a/._0.png",
                                    "a/Thumbs.db", "b/notes.txt"]
    assert "5 other files ignored" in data.source


def test_corrupt_and_truncated_images_are_skipped_and_counted(upload):
    good = png((8, 8), color=9)
    members = two_classes(**{"a/truncated.png": good[: len(good) // 2],
                             "b/garbage.jpg": b"\xff\xd8\xff" + bytes(range(256)),
                             "b/empty.png": b""})
    data = load_without_writing(upload(members))
    assert len(data) == 4
    assert data.meta["n_skipped"] == 3
    assert data.meta["skipped"] == ["a/truncated.png", "b/empty.png", "b/garbage.jpg"]
    assert "3 unreadable images skipped" in data.source


# --- archives --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,why", [
    ("../evil.png", "'..'"), ("a/../../evil.png", "'..'"), ("..\\evil.png", "'..'"),
    ("/tmp/evil.png", "absolute"), ("C:/evil.png", "drive letter"),
    ("c:\\windows\\evil.png", "drive letter"),
])
def test_path_traversal_is_refused(upload, name, why):
    path = upload(two_classes(**{name: png()}))
    refused(path, "refused", why, "create the zip")


def test_symlink_member_is_refused(upload):
    link = ("/etc/passwd".encode(), (stat.S_IFLNK | 0o777) << 16)
    refused(upload(two_classes(**{"a/link.png": link})), "symbolic link")


def test_special_file_member_is_refused(upload):
    fifo = (b"", (stat.S_IFIFO | 0o644) << 16)
    refused(upload(two_classes(**{"a/pipe.png": fifo})), "not a regular file")


def test_zip_bomb_by_ratio_is_refused_before_reading(upload, monkeypatch):
    bomb = zip_bytes(two_classes(**{"a/bomb.png": bytes(20 * limits.MiB)}))
    assert len(bomb) < limits.MiB
    path = upload(bomb)
    monkeypatch.setattr(zipfile.ZipFile, "open", None)  # reading a member would crash
    refused(path, "expands", "zip bomb", str(limits.MAX_COMPRESSION_RATIO))


def test_zip_bomb_by_total_ratio_is_refused(upload):
    bomb = zip_bytes(two_classes(**{f"a/z{i}.png": bytes(limits.MiB - 1) for i in range(3)}))
    refused(upload(bomb), "whole archive expands", "zip bomb")


def test_many_members_over_limit_is_refused(upload, monkeypatch):
    monkeypatch.setattr(limits, "MAX_MEMBERS", 5)
    refused(upload(two_classes(**{"a/2.png": png(), "b/2.png": png()})), "6 entries", "5")


@pytest.mark.parametrize("limit,words", [
    ("MAX_TOTAL_BYTES", ["unpacks to", "fewer images"]),
    ("MAX_FILE_BYTES", ["for one file"]),
    ("MAX_ARCHIVE_BYTES", ["more than the limit"]),
])
def test_byte_limits_are_refused(upload, monkeypatch, limit, words):
    path = upload(two_classes())
    monkeypatch.setattr(limits, limit, 10)
    monkeypatch.setattr(zipfile.ZipFile, "open", None)  # refused before any member is read
    refused(path, *words)


def test_total_size_is_summed_over_members(upload, monkeypatch):
    members = two_classes()
    monkeypatch.setattr(limits, "MAX_TOTAL_BYTES", sum(map(len, members.values())) - 1)
    refused(upload(members), "unpacks to")


def test_encrypted_zip_is_refused(upload):
    data = central_directory_patch(zip_bytes(two_classes()), 8, "<H", 0x1)
    refused(upload(data), "encrypted", "without a password")


def test_unknown_compression_method_is_refused(upload):
    data = central_directory_patch(zip_bytes(two_classes()), 10, "<H", 99)  # AES
    refused(upload(data), "compression method", "99")


def test_lying_size_in_directory_means_damaged(upload):
    data = central_directory_patch(zip_bytes(two_classes()), 24, "<I", 10)  # uncompressed size
    refused(upload(data), "damaged", "again")


def test_bad_checksum_means_damaged(upload):
    data = zip_bytes(two_classes(), zipfile.ZIP_STORED)
    broken = bytearray(data)
    at = data.find(b"IDAT") + 6
    broken[at] ^= 0xFF
    refused(upload(bytes(broken)), "damaged", "a/0.png")


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99])
def test_truncated_zip_is_refused(upload, cut):
    data = zip_bytes(two_classes())
    refused(upload(data[: int(len(data) * cut)]), "not a zip archive", "truncated")


def test_non_zip_with_zip_name_is_refused(upload):
    refused(upload(png()), "not a zip archive")
    refused(upload(b"plain text, not a zip\n"), "not a zip archive")


def test_empty_archives_are_refused(upload):
    refused(upload(b""), "empty", "0 bytes")
    refused(upload(zip_bytes({})), "empty zip archive")
    refused(upload({"a/": b"", "b/": b""}), "no readable images")
    refused(upload({".DS_Store": b"x", "__MACOSX/a/._x.png": b"x"}), "no readable images")


def test_duplicate_member_names_are_refused(upload):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in two_classes().items():
            archive.writestr(name, content)
        with pytest.warns(UserWarning):
            archive.writestr("a/0.png", png(color=1))
    refused(upload(out.getvalue()), "more than one file", "a/0.png")


def test_missing_path_and_loader_errors(tmp_path):
    refused(tmp_path / "nothing.zip", "does not exist")


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100_000, 100_000), (10_000, 5_000)])
def test_decompression_bomb_image_is_refused(upload, size):
    assert size[0] * size[1] > limits.MAX_PIXELS  # 2nd: between Pillow's warning and error
    refused(upload(two_classes(**{"a/bomb.png": bomb_png(*size)})),
            "a/bomb.png", "decompression bomb", f"{limits.MAX_PIXELS:,}")


def test_pixel_limit_is_ours_not_only_pillows(upload, monkeypatch):
    monkeypatch.setattr(limits, "MAX_PIXELS", 63)
    refused(upload(two_classes()), "more than 63 pixels")


def test_class_with_only_unreadable_images_says_so(upload):
    members = {"a/0.png": png(), "a/1.png": png(), "b/0.png": png(), "b/1.png": b"broken"}
    refused(upload(members), "class 'b'", "only 1 readable", "1 more could not be read")


# --- labels and classes ----------------------------------------------------------------------


def csv_upload(text, images=("1.png", "2.png", "3.png", "4.png")):
    raw = text if isinstance(text, bytes) else text.encode()
    return {"labels.csv": raw, **{name: png() for name in images}}


@pytest.mark.parametrize("text,words", [
    ("", ["empty", "filename,label"]),
    ("image,class\n1.png,a\n", ["needs a header", "filename,label", "image,class"]),
    ("1.png,a\n2.png,a\n", ["needs a header"]),
    ("filename,label\n1.png,a\n2.png,a\n3.png,b\n9.png,b\n", ["not in the upload", "9.png"]),
    ("filename,label\n1.png,a\n2.png,a\n3.png,b\n1.png,b\n", ["twice", "lines 2 and 5"]),
    ("filename,label\n1.png,a\n2.png,\n3.png,b\n4.png,b\n", ["line 3", "empty label"]),
    ("filename,label\n1.png,a\n,a\n3.png,b\n4.png,b\n", ["line 3", "empty filename"]),
    ("filename,label\n1.png,a,extra\n", ["line 2", "3 fields"]),
    ("filename,label\n1.png,a/b\n2.png,a\n", ["slash"]),
    ("filename,label\n1.png,a\n2.png,a\n3.png,a\n4.png,a\n", ["only one class", "'a'"]),
])
def test_bad_labels_csv(upload, text, words):
    refused(upload(csv_upload(text)), *words)


def test_labels_csv_not_utf8(upload):
    text = "filename,label\n1.png,caf\xe9\n2.png,caf\xe9\n3.png,b\n4.png,b\n".encode("latin-1")
    refused(upload(csv_upload(text)), "not utf-8", "csv utf-8")


def test_images_without_labels_csv_or_class_folders(upload):
    refused(upload({"1.png": png(), "2.png": png()}), "not in class folders", "labels.csv")


def test_one_class_only(upload):
    refused(upload({"cat/1.png": png(), "cat/2.png": png()}), "only one class", "'cat'")


def test_class_with_too_few_images(upload):
    refused(upload(two_classes(**{"c/0.png": png()})), "class 'c'", "at least 2")


def test_too_many_classes_states_the_limit(upload):
    members = {f"c{k:03d}/{i}.png": png() for k in range(limits.MAX_CLASSES + 1) for i in (0, 1)}
    refused(upload(members), f"{limits.MAX_CLASSES + 1} classes", f"limit of {limits.MAX_CLASSES}")


@pytest.mark.parametrize("name,words", [
    ("a/" + "y" * (limits.MAX_NAME_CHARS + 1) + ".png", ["longer than", "255"]),
    ("a/bad\nname.png", ["control characters"]),
    ("a/tab\tname.png", ["control characters"]),
    ("a/" + "d/" * 600 + "x.png", ["characters long", "1,024"]),
    (" a/x.png", ["starts or ends with a space"]),
])
def test_bad_names_are_refused_with_the_limit(upload, name, words):
    refused(upload(two_classes(**{name: png()})), *words)


# --- export ----------------------------------------------------------------------------------


def test_export_round_trip(upload, tmp_path):
    members = two_classes(**{"b/colour.png": png(mode="RGB", color=(1, 2, 3)),
                             "a/x.jpg": png(fmt="JPEG"), "b/big.png": png((30, 30))})
    data = load_without_writing(upload(members))
    again = load_without_writing(io.BytesIO(to_zip(data)))
    assert again.classes == data.classes
    assert again.ids == [i.replace(".jpg", ".png") for i in data.ids]
    assert np.array_equal(again.labels, data.labels)
    assert np.array_equal(again.images, data.images)
    assert again.meta["resized_to"] is None  # exported at the set's one size


def test_export_makes_any_class_and_id_safe(tmp_path):
    from datasets import ImageSet

    images = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    data = ImageSet(images, np.array([0, 0, 1, 1, 2, 2]),
                    ["T-shirt/top", ".hidden", "T-shirt_top"],
                    ["x-1", "x-1.png", "../../evil", "a\nb", "T-shirt/top/x", "id"],
                    "made in a test")
    target = to_zip(data, tmp_path / "clean.zip")
    assert os.listdir(tmp_path) == ["clean.zip"]  # written atomically, no temporary left over
    again = load_without_writing(target)
    assert again.classes == ["T-shirt_top", "T-shirt_top-2", "_.hidden"]
    where = {"T-shirt_top/x-1.png": 0, "T-shirt_top/x-1-2.png": 1,
             "_.hidden/_../_../evil.png": 2, "_.hidden/a_b.png": 3,
             "T-shirt_top-2/T-shirt/top/x.png": 4, "T-shirt_top-2/id.png": 5}
    assert sorted(again.ids) == sorted(where)
    for sample_id, image, label in zip(again.ids, again.images, again.labels):
        assert np.array_equal(image, images[where[sample_id]])
        assert label == [0, 0, 2, 2, 1, 1][where[sample_id]]
    assert to_zip(data) == to_zip(data)  # deterministic bytes
