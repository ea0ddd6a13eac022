"""Decoded images kept in memory, so that epochs after the first do no JPEG decoding.

``data.cache_images=true`` keeps each image as decoded: the cache changes no pixel, so a run
trains exactly as without it, whatever part of the data fits in ``data.cache_max_gb``.
``data.cache_images=shrink`` is the named approximation: every image (cached or not, so one run
never mixes the two) is shrunk to the eval resize size, so more fit in memory, and random crops
are cut from the shrunk image rather than the full photo.
"""

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as F

log = logging.getLogger(__name__)

BYTES_PER_GB = 1024**3
SHRINK = "shrink"
IMAGE_CACHE_SETTINGS = (True, False, SHRINK)


def shrink(image: Image.Image, short_side: int | None) -> Image.Image:
    """``image`` resized (as torchvision's ``Resize(short_side)``) when its shorter side is longer; else itself.

    Shrinking to the eval resize size changes nothing the eval preprocessing sees: its own
    ``Resize`` then finds the image at its target size and leaves it as it is.
    """
    if short_side is None or min(image.size) <= short_side:
        return image
    return F.resize(image, short_side)


class _Decoded(Dataset):
    """Each path decoded by ``load`` and shrunk, as a uint8 (H, W, 3) array (pickled to the parent, not shared)."""

    def __init__(self, paths: Sequence[str], load: Callable[[str], Image.Image], short_side: int | None) -> None:
        self.paths, self.load, self.short_side = paths, load, short_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(shrink(self.load(self.paths[index]), self.short_side))


def _as_is(item: np.ndarray) -> np.ndarray:
    return item


class DecodedImageCache:
    """An ImageFolder ``loader`` that serves images decoded once and held in memory as uint8 arrays.

    ``fill`` decodes images (in parallel loader processes) and keeps them until ``max_bytes`` is
    reached; a path that is not cached is decoded by ``load`` on every access. With ``short_side``
    every image, cached or not, is shrunk so that its shorter side is at most ``short_side``. Serving
    a cached image costs an array-to-PIL copy, so the random
    augmentation still runs on every access. Loader processes forked after ``fill`` share the
    arrays with the parent process.
    """

    def __init__(self, load: Callable[[str], Image.Image], short_side: int | None, max_bytes: int) -> None:
        self.load, self.short_side, self.max_bytes = load, short_side, max_bytes
        self.arrays: dict[str, np.ndarray] = {}
        self.nbytes = 0

    def __call__(self, path: str) -> Image.Image:
        array = self.arrays.get(path)
        return shrink(self.load(path), self.short_side) if array is None else Image.fromarray(array)

    def fill(self, paths: Sequence[str], num_workers: int = 0) -> None:
        """Decode and keep ``paths`` in order, stopping at the first that would exceed the budget."""
        paths = [path for path in dict.fromkeys(paths) if path not in self.arrays]
        # a generator of its own: filling draws nothing from the global one, so a run's random stream (its head's
        # initialisation, ...) is the same with the cache and without it
        decoded = DataLoader(_Decoded(paths, self.load, self.short_side), batch_size=None,
                             num_workers=min(num_workers, len(paths)), collate_fn=_as_is, generator=torch.Generator())
        kept = 0
        for path, array in zip(paths, decoded, strict=True):
            if self.nbytes + array.nbytes > self.max_bytes:
                break
            self.arrays[path] = array
            self.nbytes += array.nbytes
            kept += 1
        log.info("Image cache: %d of %d images decoded once and kept in memory (%.0f MB of data.cache_max_gb=%.3g)%s",
                 kept, len(paths), self.nbytes / 1024**2, self.max_bytes / BYTES_PER_GB,
                 "" if kept == len(paths)
                 else "; the rest are decoded every epoch (raise data.cache_max_gb to keep them)")
