"""Images on screen: sharp enlargements, thumbnails as small PNG data URLs (for the rows on
screen only), and captioned grids."""
from __future__ import annotations

import base64
import io

import numpy as np
import streamlit as st
from PIL import Image

from datasets import ImageSet


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def enlarge(image: np.ndarray, side: int) -> Image.Image:
    """Scale up with sharp pixels (small images would blur in the browser)."""
    pil = to_pil(image)
    factor = max(1, side // max(pil.size))
    return pil.resize((pil.width * factor, pil.height * factor), Image.Resampling.NEAREST)


def data_url(image: np.ndarray, side: int = 48) -> str:
    """A small PNG data URL: thumbnails for the rows on screen only."""
    buffer = io.BytesIO()
    enlarge(image, side).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_grid(data: ImageSet, positions, captions, per_row: int = 8, side: int = 64) -> None:
    positions = list(positions)
    for start in range(0, len(positions), per_row):
        cols = st.columns(per_row)
        for col, i, caption in zip(cols, positions[start:start + per_row],
                                   captions[start:start + per_row]):
            col.image(enlarge(data.images[i], side), caption=caption, width=side)


# --- reading results -----------------------------------------------------------------------------
