"""Pixels: which files are images, their headers (size, decompression-bomb check), decoding,
resizing to one size, and one colour mode for the whole set."""
from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
from PIL import Image, ImageOps

from .. import limits
from ..core import DataError
from .files import File

Image.MAX_IMAGE_PIXELS = limits.MAX_PIXELS  # Pillow's own decompression-bomb guard
NOT_IMAGES = {"BUFR", "GRIB", "HDF5", "MPEG", "EPS", "WMF", "IPTC"}  # Pillow stubs / no decoder
GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def image_extensions() -> set[str]:
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN and fmt not in NOT_IMAGES}


IMAGE_EXTENSIONS = image_extensions()


class UnreadableImage(Exception):
    pass


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


def stack(images: list[np.ndarray]) -> np.ndarray:
    """N×H×W×1 when every image is grayscale, else N×H×W×3 (gray images repeated)."""
    channels = 1 if all(im.ndim == 2 for im in images) else 3
    stacked = np.stack([im if im.ndim == 3 or channels == 1 else np.repeat(im[..., None], 3, 2)
                        for im in images])
    return stacked[..., None] if channels == 1 else stacked


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
