"""Built-in loaders, the split, IDX files, torchvision data folders and the saved-folder format.
No network: torchvision folders are built here with tiny fake IDX files."""
import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

import datasets
from datasets import DataError, ImageSet, split, storage
from datasets.builtin import data_dir, load_digits, load_idx_dir, load_torchvision, read_idx

MNIST_TEST = data_dir() / "mnist"  # where the benchmarks read MNIST's test set (docs/evidence.md)
if not MNIST_TEST.is_dir():  # the offline copy beside the project on the team's machines and CI
    MNIST_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file (MNIST's format) holding `array`."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(array)
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def fake_images(n: int, seed: int, size=28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 10


# --- digits and ImageSet ---------------------------------------------------------------------


def test_digits():
    data = load_digits()
    assert data.images.shape == (1797, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.images.max() == 255 and data.images.min() == 0
    assert data.classes == [str(c) for c in range(10)]
    assert np.bincount(data.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert len(set(data.ids)) == 1797 and data.ids[0] == "digits-0000"
    assert datasets.load("digits").fingerprint() == data.fingerprint()


@pytest.mark.parametrize("change,words", [
    (dict(images=np.zeros((2, 4, 4, 1), np.float32)), "uint8"),
    (dict(images=np.zeros((2, 4, 4, 2), np.uint8)), "channels"),
    (dict(labels=np.array([0, 2])), "labels must lie"),
    (dict(ids=["x", "x"]), "unique"),
    (dict(classes=["a", "a"]), "class names"),
    (dict(labels=np.array([0])), "do not match"),
])
def test_imageset_validates(change, words):
    args = dict(images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([0, 1]),
                classes=["a", "b"], ids=["x", "y"], source="test")
    with pytest.raises(DataError, match=words):
        ImageSet(**{**args, **change})


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(DataError, match=", ".join(datasets.BUILTINS)):
        datasets.load("imagenet")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a ZIP"):
        datasets.load(str(tmp_path / "notes.txt"))


# --- split -----------------------------------------------------------------------------------


def test_split_is_stratified_deterministic_and_complete():
    labels = load_digits().labels
    s = split(labels, 0.2, 0.2, seed=3)
    parts = np.concatenate([s.train, s.val, s.test])
    assert sorted(parts.tolist()) == list(range(len(labels)))  # disjoint and complete
    assert abs(len(s.test) - 0.2 * len(labels)) <= 1 and abs(len(s.val) - 0.2 * len(labels)) <= 1
    for part in (s.train, s.val, s.test):  # every class gets its share, within one image
        expected = np.bincount(labels) * len(part) / len(labels)
        assert np.all(np.abs(np.bincount(labels[part], minlength=10) - expected) <= 1)
    again = split(labels, 0.2, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((s.train, s.val, s.test),
                                                     (again.train, again.val, again.test)))
    assert not np.array_equal(split(labels, 0.2, 0.2, seed=4).test, s.test)


def test_split_of_tiny_classes_falls_back_to_random():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    s = split(labels, 0.2, 0.2, seed=0)
    assert len(s.train) + len(s.val) + len(s.test) == 10 and len(s.val) == len(s.test) == 2
    assert len(split(labels, 0.3, 0.0, seed=0).test) == 0


@pytest.mark.parametrize("val,test", [(0, 0.2), (0.5, 0.5), (-0.1, 0.2), (0.2, 1.0)])
def test_split_refuses_bad_fractions(val, test):
    with pytest.raises(DataError, match="fractions"):
        split(np.arange(20) % 2, val, test)


def test_split_refuses_too_few_images():
    with pytest.raises(DataError, match="cannot split 2 images"):
        split(np.array([0, 1]), 0.2, 0.2)


# --- IDX files -------------------------------------------------------------------------------


@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason="MNIST's test set is not in $DATA_DIR/mnist (nor beside the project)")
def test_real_mnist_test_set_from_idx_files():
    data = datasets.load(str(MNIST_TEST))
    assert data.images.shape == (10000, 28, 28, 1)
    assert data.classes == [str(c) for c in range(10)]
    assert np.bincount(data.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                 974, 1009]  # MNIST test set's known counts
    assert data.ids[0] == "t10k-00000" and len(set(data.ids)) == 10000
    assert 0.1 < data.images.mean() / 255 < 0.15  # ink on black, not noise


def test_idx_folder_gz_and_plain_files_count_once(tmp_path):
    x, y = fake_images(6, seed=0)
    write_idx(tmp_path, "t10k", x, y)
    write_idx(tmp_path, "t10k", x, y, gz=True)
    data = load_idx_dir(tmp_path)
    assert len(data) == 6 and np.array_equal(data.images[..., 0], x)
    assert data.ids == [f"t10k-{i:05d}" for i in range(6)]


@pytest.mark.parametrize("damage,words", [
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "not an unsigned-byte IDX"),
    (lambda raw: raw[:10], "header is incomplete|truncated"),
    (lambda raw: b"", "not an unsigned-byte IDX"),
])
def test_damaged_idx_files_are_refused(tmp_path, damage, words):
    x, y = fake_images(3, seed=0)
    write_idx(tmp_path, "t10k", x, y)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=words):
        load_idx_dir(tmp_path)


def test_bad_gzip_is_refused(tmp_path):
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="download it again"):
        read_idx(tmp_path / "x-images-idx3-ubyte.gz")


def test_idx_images_without_labels(tmp_path):
    x, y = fake_images(3, seed=0)
    write_idx(tmp_path, "t10k", x, y)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no matching t10k-labels"):
        datasets.load(str(tmp_path))


# --- torchvision data folders (built here, in torchvision's raw layout) ----------------------


@pytest.mark.parametrize("name,folder,first_class", [
    ("mnist", "MNIST", "0 - zero"), ("fashion-mnist", "FashionMNIST", "T-shirt/top")])
@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_sets_read_a_data_dir(tmp_path, name, folder, first_class, gz):
    train, test = fake_images(6, seed=1), fake_images(4, seed=2)
    write_idx(tmp_path / folder / "raw", "train", *train, gz=gz)
    write_idx(tmp_path / folder / "raw", "t10k", *test, gz=gz)
    data = datasets.load(name, data_dir=tmp_path)
    assert data.images.shape == (10, 28, 28, 1)
    assert np.array_equal(data.images[:6, ..., 0], train[0])
    assert np.array_equal(data.images[6:, ..., 0], test[0])
    assert data.labels.tolist() == train[1].tolist() + test[1].tolist()
    assert data.ids[0] == f"{name}-train-00000" and data.ids[6] == f"{name}-test-00000"
    assert data.classes[0] == first_class and len(data.classes) == 10


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    write_idx(tmp_path / "MNIST" / "raw", "train", *fake_images(3, seed=1))
    write_idx(tmp_path / "MNIST" / "raw", "t10k", *fake_images(3, seed=2))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert len(load_torchvision("mnist", download=False)) == 6


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_data_dir_says_what_to_do(tmp_path, name):
    with pytest.raises(DataError) as caught:
        datasets.load(name, data_dir=tmp_path / "nothing")
    message = str(caught.value)
    assert "was not found" in message and "DATA_DIR" in message and "--data-dir" in message
    assert str(tmp_path / "nothing") in message and "\n" not in message


def test_tampered_cifar_files_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match="CIFAR-10"):
        datasets.load("cifar10", data_dir=tmp_path)
    assert not marker.exists()


# --- saved folders ---------------------------------------------------------------------------


def small_set() -> ImageSet:
    return load_digits().subset(np.arange(0, 1797, 60))


def test_storage_round_trip(tmp_path):
    data = small_set()
    data = ImageSet(data.images, data.labels, data.classes, data.ids, data.source,
                    {"resized_to": [8, 8], "split_labels": data.labels.tolist()})
    storage.save(data, tmp_path / "set")
    assert storage.is_saved(tmp_path / "set")
    loaded = datasets.load(str(tmp_path / "set"))
    assert loaded.fingerprint() == data.fingerprint()
    assert (loaded.classes, loaded.ids, loaded.source, loaded.meta) == \
        (data.classes, data.ids, data.source, data.meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary left


def test_storage_never_overwrites(tmp_path):
    storage.save(small_set(), tmp_path / "set")
    before = (tmp_path / "set" / "images.npy").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        storage.save(load_digits(), tmp_path / "set")
    assert (tmp_path / "set" / "images.npy").read_bytes() == before


def forged_npy(shape) -> bytes:
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (117 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(16)


@pytest.mark.parametrize("damage", [
    lambda d: (d / "meta.json").write_text("{not json"),
    lambda d: (d / "meta.json").write_text(json.dumps(["a list"])),
    lambda d: (d / "meta.json").write_bytes(b"\xff\xfe"),
    lambda d: (d / "images.npy").unlink(),
    lambda d: (d / "images.npy").write_bytes((d / "images.npy").read_bytes()[:200]),
    lambda d: (d / "labels.npy").write_bytes(b"garbage"),
    lambda d: np.save(d / "labels.npy", np.arange(3)),
    lambda d: np.save(d / "images.npy", np.zeros((31, 8, 8, 1), np.float64)),
    lambda d: (d / "images.npy").write_bytes(forged_npy((10**11, 8, 8, 1))),
])
def test_damaged_saved_folder_is_refused(tmp_path, damage):
    storage.save(small_set(), tmp_path / "set")
    damage(tmp_path / "set")
    with pytest.raises(DataError, match="saved data set in .* is damaged"):
        storage.load(tmp_path / "set")


def test_pickled_arrays_are_refused_not_unpickled(tmp_path):
    storage.save(small_set(), tmp_path / "set")
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    np.save(tmp_path / "set" / "labels.npy", np.array([Payload()], dtype=object),
            allow_pickle=True)
    with pytest.raises(DataError, match="damaged"):
        storage.load(tmp_path / "set")
    assert not marker.exists()


# --- planted label noise -------------------------------------------------------------------------
def test_look_alike_noise_swaps_digits_to_their_pair_in_every_part():
    digits = load_digits()
    noisy, flipped = datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=1,
                                          pairs=datasets.LOOK_ALIKE_DIGITS, parts="all")
    pair = {1: 7, 7: 1, 4: 9, 9: 4, 3: 5, 5: 3, 6: 0, 0: 6, 2: 8, 8: 2}
    changed = np.flatnonzero(noisy.labels != digits.labels)
    assert {digits.ids[i] for i in changed} == set(flipped)
    assert all(noisy.labels[i] == pair[digits.labels[i]] for i in changed)
    assert all(flipped[digits.ids[i]] == digits.classes[digits.labels[i]] for i in changed)
    parts = digits.split(0.2, 0.2, 1)
    for part in (parts.train, parts.val, parts.test):  # the same share in every part
        assert np.isin(changed, part).sum() == round(0.1 * len(part))
    again = noisy.split(0.2, 0.2, 1)  # the noisy copy keeps the clean split
    assert all(np.array_equal(a, b) for a, b in zip((again.train, again.val, again.test),
                                                    (parts.train, parts.val, parts.test)))
    same, _ = datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=1,
                                   pairs=datasets.LOOK_ALIKE_DIGITS, parts="all")
    other, _ = datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=2,
                                    pairs=datasets.LOOK_ALIKE_DIGITS, parts="all")
    assert same.fingerprint() == noisy.fingerprint() != other.fingerprint()  # seeded
    assert "swapped to a look-alike class" in noisy.source
    assert noisy.meta["flipped"] == flipped


def test_look_alike_noise_in_training_only_and_with_the_callers_pairs():
    digits = load_digits()
    parts = digits.split(0.2, 0.2, 0)
    noisy, flipped = datasets.plant_noise(digits, 0.05, 0.2, 0.2, seed=0,
                                          pairs={"3": "8"})  # one way, by class name
    changed = np.flatnonzero(noisy.labels != digits.labels)
    assert np.isin(changed, parts.train).all() and len(changed) == round(0.05 * len(parts.train))
    assert (digits.labels[changed] == 3).all() and (noisy.labels[changed] == 8).all()
    with pytest.raises(DataError, match="fewer than the 20%"):  # only the 3s (10 %) can be
        datasets.plant_noise(digits, 0.2, 0.2, 0.2, seed=0, pairs={"3": "8"})  # swapped
    for pairs, words in [({"3": "3"}, "its own look-alike"), ([(1, 7), (1, 4)], "two look"),
                         ({"x": "1"}, "unknown class"), ({}, "at least one pair")]:
        with pytest.raises(DataError, match=words):
            datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=0, pairs=pairs)
    with pytest.raises(DataError, match="unknown parts"):
        datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=0, parts="test")


def test_uniform_noise_in_every_part_and_the_training_only_default_unchanged():
    digits = load_digits()
    noisy, flipped = datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=3, parts="all")
    changed = np.flatnonzero(noisy.labels != digits.labels)
    parts = digits.split(0.2, 0.2, 3)
    assert all(np.isin(changed, p).sum() == round(0.1 * len(p))
               for p in (parts.train, parts.val, parts.test))
    old, old_flipped = datasets.flip_training_labels(digits, 0.1, 0.2, 0.2, seed=3)
    new, new_flipped = datasets.plant_noise(digits, 0.1, 0.2, 0.2, seed=3)
    assert new.fingerprint() == old.fingerprint() and new_flipped == old_flipped
    rng = np.random.default_rng(3 + 7919)  # the draws of the uniform mode, as before
    chosen = rng.choice(parts.train, size=round(0.1 * len(parts.train)), replace=False)
    assert set(old_flipped) == {digits.ids[i] for i in chosen}
