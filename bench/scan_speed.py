"""Time the scan's check of image files in one thread: headers only (the scan before) vs the check it runs now.

    OMP_NUM_THREADS=1 python bench/scan_speed.py --data ../shared/datasets/hymenoptera_data --count 300

Writes ``--count`` JPEGs of 500x375 pixels (the size of most ants/bees photos: a gradient with noise,
quality 90), baseline and progressive, to a temporary folder, and times over them and over every image
under ``--data`` (if given), each file read once beforehand so the OS's cache serves all three:

- header: ``Image.open`` + ``verify()`` + the end-marker read, the check the scan ran on a JPEG before;
- scan: ``transferlab.data.scan.check_image`` as the scan runs it now (the above, then ``jpeg.cut_short``);
- full decode: ``Image.open(...).load()``, for scale.

One thread, so the figures are images per second per core (the scan runs up to 8 threads; PIL decodes
without holding the GIL).
"""

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/scan_speed.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np
from PIL import Image

from transferlab.data import scan
from transferlab.data.folders import IMG_EXTENSIONS
from transferlab.data.images import PIL_MAX_IMAGE_PIXELS, no_pixel_limit


def write_jpegs(folder: Path, count: int, progressive: bool, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """``count`` photo-sized JPEGs: a colour gradient with noise, so they compress like photos, not like flat colour."""
    folder.mkdir(parents=True)
    width, height = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    paths = []
    for index in range(count):
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index:04d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90, progressive=progressive)
    return paths


def header_only(path: Path) -> None:
    with Image.open(path) as image:
        image_format = image.format
        image.verify()
    marker = scan.END_MARKERS.get(image_format)
    if marker is not None:
        scan.ends_with(path, marker)


def full_decode(path: Path) -> None:
    with Image.open(path) as image:
        image.load()


def images_per_second(check: Callable[[Path], object], paths: list[Path], repeats: int = 3) -> float:
    """The best of ``repeats`` passes over ``paths``, in one thread."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for path in paths:
            check(path)
        best = min(best, time.perf_counter() - started)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder of images to time too (searched recursively)")
    parser.add_argument("--count", type=int, default=300, help="generated JPEGs of each kind")
    args = parser.parse_args()
    checks = {"header": header_only, "scan": lambda path: scan.check_image(path, PIL_MAX_IMAGE_PIXELS),
              "full decode": full_decode}
    with tempfile.TemporaryDirectory() as temporary:
        sets = {f"generated 500x375 {kind} JPEG": write_jpegs(Path(temporary, kind), args.count, kind == "progressive")
                for kind in ("baseline", "progressive")}
        if args.data is not None:
            sets[str(args.data)] = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        print(f"images/s in one thread (PIL {Image.__version__})")
        for name, paths in sets.items():
            for path in paths:
                path.read_bytes()  # into the OS's cache, for every check alike
            with no_pixel_limit():
                rates = {label: images_per_second(check, paths) for label, check in checks.items()}
            figures = ", ".join(f"{label} {rate:,.0f}" for label, rate in rates.items())
            print(f"{name} ({len(paths)} files): {figures}; the scan now costs "
                  f"{rates['header'] / rates['scan']:.1f}x the header check")


if __name__ == "__main__":
    main()
