"""The one in-memory type for a labelled image set, and the train/validation/test split."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split


class DataError(ValueError):
    """Data that cannot be used. The message says what is wrong and what to do."""


SPLIT_LABELS = "split_labels"  # meta key: the labels the split is stratified by, when they
# differ from the labels (a demo set with planted label noise keeps the split of its clean labels)


@dataclass(frozen=True)
class ImageSet:
    """Labelled images held in memory.

    images:  uint8 array N×H×W×C (C = 1 for grayscale, 3 for colour)
    labels:  int64 array N, values in 0..len(classes)-1
    classes: class names, index = label
    ids:     stable string sample ids, unique
    source:  where the data came from, in words
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    ids: list[str]
    source: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        validate(self)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, index) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[index], self.labels[index], list(self.classes),
                        [self.ids[i] for i in index], self.source, dict(self.meta))

    def with_labels(self, labels: np.ndarray, note: str = "") -> "ImageSet":
        source = f"{self.source}; {note}" if note else self.source
        return ImageSet(self.images, np.asarray(labels, dtype=np.int64), list(self.classes),
                        list(self.ids), source, dict(self.meta))

    def split_labels(self) -> np.ndarray:
        """The labels the train/validation/test split is stratified by: the set's own labels, or
        for a set with planted label noise those of its clean original, so that the noisy copy
        has the very same split."""
        return np.asarray(self.meta.get(SPLIT_LABELS, self.labels), dtype=np.int64)

    def split(self, val_fraction: float = 0.2, test_fraction: float = 0.2,
              seed: int = 0) -> "Split":
        """The deterministic stratified split of this set (see `split`)."""
        return split(self.split_labels(), val_fraction, test_fraction, seed)

    def relabelled(self, labels: np.ndarray, note: str = "") -> "ImageSet":
        """A copy with other labels that keeps this set's split (planted label noise)."""
        copy = self.with_labels(labels, note)
        copy.meta[SPLIT_LABELS] = self.split_labels().tolist()
        return copy

    def fingerprint(self) -> str:
        """A short hash of images, labels and ids: a run refuses data that changed under it."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\n".join(self.ids).encode())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()[:16]


def validate(data: ImageSet) -> None:
    images, labels = data.images, data.labels
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise DataError("images must be a uint8 array of shape N×H×W×C")
    if images.shape[3] not in (1, 3):
        raise DataError(f"images must have 1 or 3 channels, not {images.shape[3]}")
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError("labels must be a 1-D integer array")
    if len(labels) != len(images) or len(data.ids) != len(images):
        raise DataError(f"{len(images)} images, {len(labels)} labels and {len(data.ids)} ids "
                        "do not match")
    if len(images) == 0:
        raise DataError("the data set is empty")
    if len(set(data.ids)) != len(data.ids) or not all(isinstance(i, str) for i in data.ids):
        raise DataError("sample ids must be unique strings")
    classes = data.classes
    if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise DataError("class names must be unique strings")
    if labels.min() < 0 or labels.max() >= len(data.classes):
        raise DataError(f"labels must lie in 0..{len(data.classes) - 1}")


@dataclass(frozen=True)
class Split:
    """Positions into an ImageSet. The test part is never used to compute influence."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split(labels: np.ndarray, val_fraction: float = 0.2, test_fraction: float = 0.2,
          seed: int = 0) -> Split:
    """Deterministic stratified split of positions 0..N-1 into train, validation and test."""
    labels = np.asarray(labels)
    n = len(labels)
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("validation and test fractions must be in (0, 1) and sum to less than 1")
    try:
        rest, test = ((np.arange(n), np.arange(0)) if test_fraction == 0 else
                      cut(np.arange(n), labels, test_fraction, seed))
        train, val = cut(rest, labels, val_fraction / (1 - test_fraction), seed)
    except ValueError as e:
        raise DataError(f"cannot split {n} images into train/validation/test with these "
                        f"fractions ({e}): use more images or other fractions") from None
    return Split(np.sort(train), np.sort(val), np.sort(test))


def cut(positions: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """(rest, part): part holds `fraction` of positions, stratified by label when every class
    can be represented on both sides, at random otherwise."""
    try:
        return train_test_split(positions, test_size=fraction, random_state=seed,
                                stratify=labels[positions])
    except ValueError:  # a class with < 2 members, or fewer places than classes
        return train_test_split(positions, test_size=fraction, random_state=seed)
