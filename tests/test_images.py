"""Tests for transferlab.images: every PIL mode decodes to 8-bit RGB of the same size."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.images import load_rgb, to_rgb

SIZE = (6, 4)  # width, height: not square, so a swapped size would show


def rgb_pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    assert image.size == SIZE
    return np.asarray(image)


def palette_image() -> Image.Image:
    """Index 0 everywhere except index 1 at (1, 1); palette 0 = (10, 20, 30), 1 = (200, 100, 50)."""
    image = Image.new("P", SIZE, 0)
    image.putpalette([10, 20, 30, 200, 100, 50])
    image.putpixel((1, 1), 1)
    return image


def gradient(dtype: type, low: float, high: float) -> np.ndarray:
    """A horizontal gradient from ``low`` (left) to ``high`` (right), one row per image row."""
    return np.tile(np.linspace(low, high, SIZE[0]).astype(dtype), (SIZE[1], 1))


def assert_dark_to_bright(pixels: np.ndarray) -> None:
    """Rescaled, not clipped: left column black, right column white, the middle in between."""
    grey = pixels[..., 0].astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert (grey[:, 0] == 0).all()
    assert (grey[:, -1] == 255).all()
    assert (np.diff(grey[0]) > 0).all()  # strictly increasing: no run of clipped whites
    assert 60 < grey[0, SIZE[0] // 2] < 200


def test_rgb_keeps_its_pixels():
    image = Image.new("RGB", SIZE, (1, 2, 3))
    assert (rgb_pixels(to_rgb(image)) == (1, 2, 3)).all()


def test_greyscale_l():
    pixels = rgb_pixels(to_rgb(Image.new("L", SIZE, 77)))
    assert (pixels == 77).all()


def test_greyscale_with_alpha_la():
    pixels = rgb_pixels(to_rgb(Image.new("LA", SIZE, (77, 10))))
    assert (pixels == 77).all()


def test_palette_without_transparency():
    pixels = rgb_pixels(to_rgb(palette_image()))
    assert tuple(pixels[0, 0]) == (10, 20, 30)
    assert tuple(pixels[1, 1]) == (200, 100, 50)


def test_palette_with_byte_transparency_converts_without_warning(tmp_path: Path):
    image = palette_image()
    image.info["transparency"] = b"\x00\x80"  # per-entry alpha: PIL warns on a direct convert("RGB")
    image.save(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = rgb_pixels(load_rgb(tmp_path / "p.png"))
    assert tuple(pixels[0, 0]) == (10, 20, 30)
    assert tuple(pixels[1, 1]) == (200, 100, 50)


def test_palette_with_index_transparency():
    image = palette_image()
    image.info["transparency"] = 0
    pixels = rgb_pixels(to_rgb(image))
    assert tuple(pixels[0, 0]) == (10, 20, 30)


def test_rgba_drops_alpha():
    pixels = rgb_pixels(to_rgb(Image.new("RGBA", SIZE, (10, 20, 30, 0))))
    assert (pixels == (10, 20, 30)).all()


@pytest.mark.parametrize(("cmyk", "rgb"), [((0, 0, 0, 0), (255, 255, 255)), ((0, 255, 255, 0), (255, 0, 0))])
def test_cmyk_jpeg(tmp_path: Path, cmyk: tuple[int, ...], rgb: tuple[int, int, int]):
    Image.new("CMYK", SIZE, cmyk).save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as saved:
        assert saved.mode == "CMYK"
    pixels = rgb_pixels(load_rgb(tmp_path / "c.jpg")).astype(int)
    assert np.abs(pixels - rgb).max() <= 3  # JPEG is lossy


def test_16bit_png_is_rescaled_not_clipped(tmp_path: Path):
    Image.fromarray(gradient(np.uint16, 0, 65535)).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as saved:
        assert saved.mode == "I;16"
    assert_dark_to_bright(rgb_pixels(load_rgb(tmp_path / "g16.png")))


def test_32bit_integer_mode_i_is_rescaled():
    image = Image.fromarray(gradient(np.int32, -1000, 100_000))
    assert image.mode == "I"
    assert_dark_to_bright(rgb_pixels(to_rgb(image)))


def test_float_mode_f_is_rescaled():
    image = Image.fromarray(gradient(np.float32, 0.0, 1.0))  # convert("RGB") would make this all black
    assert image.mode == "F"
    assert_dark_to_bright(rgb_pixels(to_rgb(image)))


def test_16bit_scales_from_the_full_range_so_brightness_compares_across_images():
    image = Image.fromarray(np.full((SIZE[1], SIZE[0]), 5000, dtype=np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = rgb_pixels(to_rgb(image))
    assert np.unique(pixels).tolist() == [round(5000 / 257)]  # not stretched to black or white


def open_descriptors_of(path: Path) -> list[str]:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc/self/fd to list open files")
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(fd_dir / fd))
        except OSError:
            continue
    return [t for t in targets if t == str(path.resolve())]


def test_load_rgb_closes_the_file_and_keeps_the_pixels(tmp_path: Path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", SIZE, (1, 2, 3)).save(path)
    image = load_rgb(path)
    assert open_descriptors_of(path) == []
    path.unlink()
    assert (rgb_pixels(image) == (1, 2, 3)).all()
