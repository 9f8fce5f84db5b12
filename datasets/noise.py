"""Planted label noise: the app's demo and the label-noise benchmark flip a share of the training
labels, so that one can count how many of them a ranking finds."""
from __future__ import annotations

import numpy as np

from .core import DataError, ImageSet


def flip_training_labels(data: ImageSet, fraction: float, val_fraction: float,
                         test_fraction: float, seed: int) -> tuple[ImageSet, dict[str, str]]:
    """A copy of `data` in which `fraction` of the *training* images (under the split with these
    settings) carry a wrong label, drawn at random from the other classes. Returns the copy and
    {sample id: its true class}. The copy keeps the split of the clean labels
    (ImageSet.relabelled), so validation and test stay clean and the flipped images stay in
    training."""
    if not 0 < fraction <= 0.5:
        raise DataError("the share of labels to flip must be above 0 % and at most 50 %")
    if len(data.classes) < 2:
        raise DataError("flipping labels needs at least two classes")
    train = data.split(val_fraction, test_fraction, seed).train
    rng = np.random.default_rng(seed + 7919)
    chosen = rng.choice(train, size=max(1, round(fraction * len(train))), replace=False)
    labels = data.labels.copy()
    labels[chosen] = (labels[chosen] + rng.integers(1, len(data.classes), len(chosen))) \
        % len(data.classes)
    flipped = {data.ids[i]: data.classes[data.labels[i]] for i in sorted(chosen)}
    noisy = data.relabelled(labels, f"demo: {len(chosen)} training labels ({fraction:.0%}) "
                                    "flipped at random")
    noisy.meta["flipped"] = flipped
    return noisy, flipped
