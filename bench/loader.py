"""Time the input pipeline alone: training batches per second, per epoch, with no model.

    python bench/loader.py --data ../shared/datasets/hymenoptera_data --epochs 3 --workers 0 2

For each worker count it times, in one process: the tutorial's ``ImageFolder`` + ``DataLoader``
(``bench/reference.py``'s transforms, new workers every epoch as in the tutorial), and
transferlab's data module with ``data.cache_images`` off and on (setup, which holds the scan and
the cache fill, is timed apart). Epoch 1 pays for starting workers; later epochs show what
decoding costs, which is what the image cache removes.
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/loader.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader
from torchvision import datasets

from bench.compare import CONFIG_DIR, hydra_value, machine_info, machine_lines
from bench.reference import data_transforms


def epoch_seconds(batches: Iterable, epochs: int, set_epoch=None) -> list[float]:
    """Wall seconds to draw every batch of each epoch."""
    seconds = []
    for epoch in range(epochs):
        if set_epoch:
            set_epoch(epoch)
        started = time.perf_counter()
        for _ in batches:
            pass
        seconds.append(time.perf_counter() - started)
    return seconds


def tutorial(data: Path, image_size: int, batch_size: int, workers: int, epochs: int) -> tuple[float, list[float], int]:
    started = time.perf_counter()
    dataset = datasets.ImageFolder(str(data / "train"), data_transforms(image_size)["train"])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    return time.perf_counter() - started, epoch_seconds(loader, epochs), len(dataset)


def transferlab(data: Path, image_size: int, batch_size: int, workers: int, epochs: int,
                cache: bool | str) -> tuple[float, list[float], int]:
    from transferlab.cli.train import build_datamodule

    overrides = ["data=image_folder", f"data.root={hydra_value(data.resolve())}", f"data.image_size={image_size}",
                 f"data.batch_size={batch_size}", f"data.num_workers={workers}", f"data.cache_images={cache}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        datamodule = build_datamodule(cfg, Path(run_dir))
        datamodule.setup("fit")
        setup_s = time.perf_counter() - started
        loader = datamodule.train_dataloader()
        return setup_s, epoch_seconds(loader, epochs, loader.sampler.set_epoch), len(datamodule.train_set)


def main() -> int:
    parser = argparse.ArgumentParser(description="Training-batch throughput of the input pipeline, no model.")
    parser.add_argument("--data", required=True, type=Path, help="image folder with train/ (and val/)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    print(machine_lines(machine_info("cpu")), flush=True)
    rows = ["| pipeline | workers | setup (s) | epoch 1 (s) | later epochs (s, median) | later epochs (images/s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    pipelines = [("tutorial ImageFolder + DataLoader", tutorial, {}),
                 ("transferlab, data.cache_images=false", transferlab, {"cache": False}),
                 ("transferlab, data.cache_images=true (exact)", transferlab, {"cache": True}),
                 ("transferlab, data.cache_images=shrink", transferlab, {"cache": "shrink"})]
    for workers in args.workers:
        for name, run, options in pipelines:
            setup_s, seconds, images = run(args.data, args.image_size, args.batch_size, workers, args.epochs, **options)
            later = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            rows.append(f"| {name} | {workers} | {setup_s:.1f} | {seconds[0]:.2f} | {later:.2f} "
                        f"| {images / later:.0f} |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
