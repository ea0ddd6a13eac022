"""Decoding image files into RGB, whatever mode they were saved in."""

from pathlib import Path

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB.

    Plain ``convert("RGB")`` clips 16-bit and float images to white. 16-bit images are scaled
    from their full range (65535 -> 255) so brightness compares across images; 32-bit integer
    and float images have no fixed range and are stretched from their own minimum to maximum.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(values.round().astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((values - low) * scale).round().astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's warning about palette transparency
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file and return it decoded as RGB (the ImageFolder loader)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)
