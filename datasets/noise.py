"""Planted label noise: the app's demo and the label-noise benchmarks change a share of the
labels, so that one can count how many of them a ranking or a label check finds.

Two kinds of wrong label:

* uniform: a random other class;
* look-alike: the class that image is easily taken for (`pairs`), as real annotators err.
  For handwritten digits LOOK_ALIKE_DIGITS: 1↔7, 4↔9, 3↔5, 6↔0, 2↔8 (class index = digit in
  MNIST, the sklearn digits and an upload with one folder per digit); any other data set
  takes the caller's pairs.

The noise goes into the training part only (validation and test stay clean: the yardstick is
trusted) or into every part, each part getting the same share (a real upload is noisy
everywhere). Seeded; the noisy copy keeps the split of the clean labels."""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from .core import DataError, ImageSet

LOOK_ALIKE_DIGITS = ((1, 7), (4, 9), (3, 5), (6, 0), (2, 8))  # swapped both ways
PARTS = ("train", "all")


def look_alikes(classes: list[str], pairs: Mapping | Iterable[tuple]) -> np.ndarray:
    """Per class index, the class its images are swapped to (−1: none). `pairs`: (a, b) pairs
    swapped both ways, or a mapping {a: b} taken one way; each a class name or index."""
    def index(c) -> int:
        if isinstance(c, str) and c in classes:
            return classes.index(c)
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(classes):
            return int(c)
        raise DataError(f"unknown class {c!r} in the look-alike pairs")

    ways = list(pairs.items()) if isinstance(pairs, Mapping) else \
        [way for a, b in pairs for way in ((a, b), (b, a))]
    target = np.full(len(classes), -1)
    for a, b in ways:
        a, b = index(a), index(b)
        if a == b:
            raise DataError(f"class {classes[a]!r} cannot be its own look-alike")
        if target[a] not in (-1, b):
            raise DataError(f"class {classes[a]!r} has two look-alikes")
        target[a] = b
    if (target < 0).all():
        raise DataError("give at least one pair of look-alike classes")
    return target


def plant_noise(data: ImageSet, fraction: float, val_fraction: float, test_fraction: float,
                seed: int, pairs: Mapping | Iterable[tuple] | None = None,
                parts: str = "train", draw_seed: int | None = None
                ) -> tuple[ImageSet, dict[str, str]]:
    """A copy of `data` in which `fraction` of the images of the training part (parts="train")
    or of each part (parts="all"), under the split with these settings, carry a wrong label:
    a random other class (pairs None), or the look-alike of its class (look_alikes; drawn among
    the images of classes that have one). Returns the copy and {sample id: its true class}
    (also kept as meta["flipped"]). The copy keeps the split of the clean labels
    (ImageSet.relabelled). `draw_seed` seeds the choice of images and of their wrong labels
    (default `seed` + 7919, apart from the split's; the label-noise benchmarks' committed
    results drew with the split's seed itself)."""
    if not 0 < fraction <= 0.5:
        raise DataError("the share of labels to flip must be above 0 % and at most 50 %")
    if len(data.classes) < 2:
        raise DataError("flipping labels needs at least two classes")
    if parts not in PARTS:
        raise DataError(f"unknown parts {parts!r}: use {' or '.join(PARTS)}")
    target = None if pairs is None else look_alikes(list(data.classes), pairs)
    split = data.split(val_fraction, test_fraction, seed)
    rng = np.random.default_rng(seed + 7919 if draw_seed is None else draw_seed)
    labels = data.labels.copy()
    chosen = []
    for part in (split.train,) if parts == "train" else (split.train, split.val, split.test):
        if not len(part):
            continue
        size = max(1, round(fraction * len(part)))
        if target is None:
            picked = rng.choice(part, size=size, replace=False)
            labels[picked] = (labels[picked] + rng.integers(1, len(data.classes), size)) \
                % len(data.classes)
        else:
            candidates = part[target[data.labels[part]] >= 0]
            if size > len(candidates):
                raise DataError(f"only {len(candidates)} of {len(part)} images belong to a "
                                f"class with a look-alike: fewer than the {fraction:.0%} asked")
            picked = rng.choice(candidates, size=size, replace=False)
            labels[picked] = target[labels[picked]]
        chosen += picked.tolist()
    flipped = {data.ids[i]: data.classes[data.labels[i]] for i in sorted(chosen)}
    where = "training labels" if parts == "train" else "labels (in every part)"
    how = "flipped at random" if target is None else "swapped to a look-alike class"
    noisy = data.relabelled(labels, f"demo: {len(chosen)} {where} ({fraction:.0%}) {how}")
    noisy.meta["flipped"] = flipped
    return noisy, flipped


def flip_training_labels(data: ImageSet, fraction: float, val_fraction: float,
                         test_fraction: float, seed: int) -> tuple[ImageSet, dict[str, str]]:
    """A copy of `data` in which `fraction` of the *training* images carry a wrong label drawn
    at random from the other classes (plant_noise, uniform, training part only): validation
    and test stay clean and the flipped images stay in training."""
    return plant_noise(data, fraction, val_fraction, test_fraction, seed)
