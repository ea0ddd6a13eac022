"""Make a pretrained ResNet-18 without downloading one, for measurements that need a backbone worth transferring.

    python bench/pretrain_source.py --data ../shared/datasets/hymenoptera_data --out /tmp/exemplar-source

No ImageNet weights can be downloaded here, and a random backbone says nothing about transfer. So the
source task is made from the pixels of the training photos alone, without their class labels
(exemplar classification, Dosovitskiy et al. 2014): every training photo of ``--data`` becomes a class
of its own, and a ResNet-18 learns from random init to tell which photo a heavily augmented crop
(random resized crop down to 20% of the area, flip, colour jitter, grey) came from. transferlab trains it
(``mode=scratch``, 96-px crops of photos kept at 128 px, AdamW, cosine schedule, bf16 autocast); this
script writes the backbone as a torchvision state dict, ``<out>/resnet18-exemplar.pth``, which
``bench/compare.py --weights``, ``bench/views.py --weights`` and ``backbone.weights=`` take.

The validation photos of ``--data`` are never read, so the transfer is measured on photos the source
never saw. (Predicting how a photo was rotated was tried first: its features classified ants and bees no
better than a random backbone's.)
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/pretrain_source.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

import torch
import torchvision
from hydra import compose, initialize_config_dir
from PIL import Image, ImageOps

from bench.compare import CONFIG_DIR, hydra_value

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
AUGMENT = ("[{_target_: torchvision.transforms.RandomResizedCrop, size: ${data.image_size}, scale: [0.2, 1.0]}, "
           "{_target_: torchvision.transforms.RandomHorizontalFlip}, "
           "{_target_: torchvision.transforms.ColorJitter, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1}, "
           "{_target_: torchvision.transforms.RandomGrayscale, p: 0.2}]")


def make_exemplar_set(photos: Path, out: Path, short_side: int) -> int:
    """Write ``out/{train,val}/<n>/photo.jpg``: every photo its own class, its shorter side ``short_side`` px.

    The same file is in both splits: validation here only shows the source task being learned.
    """
    files = sorted(path for path in photos.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    for index, path in enumerate(files):
        with Image.open(path) as image:  # within twice the size first, then down to the shorter side
            small = ImageOps.contain(image.convert("RGB"), (2 * short_side, 2 * short_side))
            small = ImageOps.cover(small, (short_side, short_side))
        for split in ("train", "val"):
            folder = out / split / f"{index:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            small.save(folder / "photo.jpg", quality=95)
    return len(files)


def torchvision_state_dict(checkpoint: Path, seed: int) -> dict[str, torch.Tensor]:
    """The backbone of a transferlab checkpoint as a torchvision ResNet-18 state dict (``fc``: a seeded random init,
    which every transfer replaces)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    backbone = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    torch.manual_seed(seed)
    fresh = torchvision.models.resnet18(weights=None).state_dict()
    backbone.update({key: value for key, value in fresh.items() if key.startswith("fc.")})
    return backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with train/: its photos become the set")
    parser.add_argument("--out", type=Path, required=True, help="where the exemplar set, the run and the weights go")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("overrides", nargs="*", help="more transferlab overrides")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from transferlab.cli.train import train  # after --help

    exemplar_set = args.out / "exemplar-set"
    if not exemplar_set.is_dir():
        count = make_exemplar_set(args.data / "train", exemplar_set, short_side=128)
        print(f"{count} photos, one class each, written to {exemplar_set}", flush=True)
    overrides = [
        "data=image_folder", f"data.root={hydra_value(exemplar_set.resolve())}", "data.image_size=96",
        "data.batch_size=64", f"data.augment={AUGMENT}", "backbone=resnet18", "mode=scratch", "optimizer=adamw",
        "optimizer.lr=0.003", "scheduler=cosine", "trainer.precision=bf16-mixed", f"trainer.max_epochs={args.epochs}",
        "+trainer.check_val_every_n_epoch=10", "~callbacks.tensorboard_images", "trainer.enable_progress_bar=false",
        f"seed={args.seed}", f"paths.output_dir={hydra_value((args.out / 'run').resolve())}", *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    results = train(cfg)
    weights = args.out / "resnet18-exemplar.pth"
    last = Path(results["best_checkpoint"]).with_name("last.ckpt")
    torch.save(torchvision_state_dict(last, args.seed), weights)
    print(f"Source task: {results['best_val_acc']:.4f} of the photos recognised from a centre crop after "
          f"{results['epochs_run']} epochs ({results['train_time_s']:.0f} s); backbone written to {weights}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
