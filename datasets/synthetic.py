"""A synthetic, offline colour data set: circles, squares and triangles of random colour, size and
place on random backgrounds (32×32 RGB). The same seed gives the same images on every machine."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .core import ImageSet

SHAPES = ("circle", "square", "triangle")


def draw(shape: str, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """One image: a shape of random colour, size and place on a random, slightly noisy
    background."""
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = Image.new("RGB", (side, side), background)
    colour = tuple(int(c) for c in np.clip(255 - np.array(background)
                                           + rng.integers(-40, 41, 3), 0, 255))  # contrasting
    size = rng.uniform(0.45, 0.8) * side
    cx, cy = rng.uniform(size / 2, side - size / 2, 2)
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    noise = rng.normal(0, 6, (side, side, 3))
    return np.clip(np.asarray(image, dtype=float) + noise, 0, 255).astype(np.uint8)


def load_shapes(n: int = 600, seed: int = 0) -> ImageSet:
    """n images, as many of each shape."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPES)
    images = np.stack([draw(SHAPES[c], rng) for c in labels])
    return ImageSet(images, labels.astype(np.int64), list(SHAPES),
                    [f"shapes-{i:04d}" for i in range(n)],
                    f"synthetic coloured shapes (offline, {n:,} images, 32×32)")
