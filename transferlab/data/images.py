"""Decoding image files into RGB, whatever mode they were saved in, and the one limit on their size in pixels."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

PIL_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb limit
TOO_LARGE = "too large"  # the kind of problem (scan) or error (predict, evaluate) of an image over the limit


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


@contextlib.contextmanager
def no_pixel_limit() -> Iterator[None]:
    """Let PIL open any size: the caller compares the size from the header with its own limit, before decoding."""
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@dataclass(frozen=True)
class PixelLimit:
    """The most pixels an image may have, and the setting that sets it (``configured`` None: PIL's limit).

    Training (``data.max_image_pixels``), predict and evaluate (``max_image_pixels``) name it the same way.
    """

    configured: int | None = None
    setting: str = "data.max_image_pixels"

    @property
    def pixels(self) -> int:
        return self.configured or PIL_MAX_IMAGE_PIXELS

    def describe(self) -> str:
        if not self.configured:
            return (f"PIL's decompression-bomb limit of {PIL_MAX_IMAGE_PIXELS:,} pixels "
                    f"(raise it with {self.setting}=...)")
        return f"{self.setting}={self.configured}"

    def reason(self, pixels: int) -> str | None:
        """``"too large: ..."`` for an image of ``pixels`` over the limit, else None."""
        return f"{TOO_LARGE}: {pixels:,} pixels > {self.describe()}" if pixels > self.pixels else None

    def load_rgb(self, path: str | Path | BinaryIO) -> Image.Image:
        """``load_rgb`` of a file or binary file object, refusing an image over the limit from its header, before
        decoding it.

        Raises PIL's ``DecompressionBombError`` naming the file and the limit (PIL's own refuses only
        images over twice its limit, and names neither).
        """
        with no_pixel_limit():
            image = Image.open(path)
        with image:
            reason = self.reason(image.width * image.height)
            if reason:
                raise Image.DecompressionBombError(f"{path}: {reason}" if isinstance(path, str | Path) else reason)
            image.load()
            return to_rgb(image)
