"""The LightningDataModule over an image folder with ``train/`` and ``val/`` (or a carved-out val split)."""

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import ImageFolder

from transferlab.data.device_augment import DeviceAugment, collate_images, uint8_tensor
from transferlab.data.download import fetch_dataset
from transferlab.data.features import CacheFeatures, caches_features, feature_cache
from transferlab.data.folders import ClassFolder, class_folders, is_image, loader_workers, require_classes
from transferlab.data.image_cache import BYTES_PER_GB, IMAGE_CACHE_SETTINGS, SHRINK, DecodedImageCache
from transferlab.data.images import PIL_MAX_IMAGE_PIXELS, load_rgb
from transferlab.data.sampling import EpochShuffle, stratified_split
from transferlab.data.scan import ScanReport, count_kinds, log_warnings, scan_dataset, write_skipped
from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.files import write_json_atomically
from transferlab.layout import SCAN_CACHE, SKIPPED, SPLIT
from transferlab.ranks import is_global_zero

log = logging.getLogger(__name__)

IMBALANCE_RATIO = 5  # largest / smallest class in train beyond which a warning suggests balanced weights
ON_BAD_IMAGE = ("error", "skip")


class RGBLoader:
    """``load_rgb`` under PIL's decompression-bomb limit set to ``max_pixels`` (in loader workers too)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels

    def __call__(self, path: str) -> Image.Image:
        Image.MAX_IMAGE_PIXELS = self.max_pixels
        return load_rgb(path)


class ImageFolderDataModule(pl.LightningDataModule):
    """``root/train`` and ``root/val`` ImageFolder splits, one sub-folder per class.

    Images go through ``preprocessing`` (built from the backbone's weights) with its crop set to
    ``image_size``: ``augment`` and the normalisation for training, the eval transform for
    validation. Without ``root/val`` a stratified, seeded ``val_split`` of ``root/train`` is held
    out and the file lists of both parts are written to ``run_dir/split.json``. With ``download`` (a dict with ``url``,
    ``folder`` and optional ``sha256``) a missing ``root`` that is the download's target is
    downloaded first.

    Before the data sets are built, every file is scanned (``transferlab.scan``): bad files stop
    setup with one ``ConfigError`` (``on_bad_image="error"``) or are left out (``"skip"``, listed in
    ``run_dir/skipped.txt``). The scan is cached in ``run_dir/scan.json``. ``class_counts`` holds
    the number of training images per class.

    With ``cache_images`` every image is decoded once at setup and kept in memory up to
    ``cache_max_gb`` (see ``transferlab.data.image_cache``); ``cache_features`` and ``cache_views``
    configure the feature cache of a frozen backbone (``feature_cache``). With ``device_augment``
    the loader serves training images as decoded uint8 tensors and ``augment`` runs on the device
    (``transferlab.data.device_augment``). The defaults here are those of ``conf/speed/default.yaml``
    (``device_augment``: resolved to true or false for the run before it reaches here).
    """

    def __init__(
        self,
        root: str,
        preprocessing: Preprocessing,
        image_size: int | None = 224,
        augment: Sequence[Callable] = (),
        batch_size: int = 32,
        num_workers: int | None = None,
        val_split: float = 0.2,
        seed: int = 0,
        download: dict | None = None,
        on_bad_image: str = "error",
        max_image_pixels: int | None = None,
        pin_memory: bool | None = None,
        cache_images: bool | str = True,
        cache_max_gb: float = 2.0,
        cache_features: bool | str = "auto",
        cache_views: int | str | None = "auto",
        device_augment: bool | str = False,
        run_dir: str | None = None,
    ) -> None:
        super().__init__()
        if on_bad_image not in ON_BAD_IMAGE:
            raise ConfigError(f"data.on_bad_image={on_bad_image!r} is not one of {', '.join(ON_BAD_IMAGE)}.")
        if cache_images not in IMAGE_CACHE_SETTINGS:
            raise ConfigError(f"data.cache_images={cache_images!r} is not one of true, false, {SHRINK}.")
        self.save_hyperparameters(ignore=["preprocessing", "augment", "run_dir"])
        self.root = Path(root).expanduser()
        self.preprocessing = preprocessing.at_size(image_size)
        self.augment = list(augment or [])
        self.device_augment = (DeviceAugment(self.augment, self.preprocessing.mean, self.preprocessing.std)
                               if device_augment is True and self.augment else None)  # "auto": resolved by the run
        self.train_transform = (uint8_tensor() if self.device_augment  # the rest on the device, per batch
                                else self.preprocessing.train_transform(self.augment))
        self.eval_transform = self.preprocessing.eval_transform()
        self.batch_size = batch_size
        self.num_workers = loader_workers(num_workers)
        self.val_split = val_split
        self.seed = seed
        self.download = download
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.on_bad_image = on_bad_image
        self.max_image_pixels = max_image_pixels or PIL_MAX_IMAGE_PIXELS
        self.run_dir = Path(run_dir) if run_dir else None
        self.cache_images = cache_images
        self.cache_max_gb = cache_max_gb
        self.cache_features, self.cache_views = cache_features, cache_views
        self.image_cache: DecodedImageCache | None = None
        self.class_names: list[str] = []
        self.class_counts: list[int] = []
        self.scan_report: ScanReport | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download the data set when ``root`` is missing and is where the download extracts to."""
        if self.root.exists() or not self.download:
            return
        target = Path(self.download["dir"]).expanduser() / self.download["folder"]
        if target.resolve() != self.root.resolve():
            return
        fetch_dataset(self.download["url"], self.download["dir"], self.download["folder"], self.download.get("sha256"))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_dir, val_dir = self._check_layout()
        self.class_names = class_folders(train_dir)
        if len(self.class_names) < 2:
            raise ConfigError(
                f"{train_dir} has one class folder ({self.class_names[0]}), and a classifier needs at least two "
                f"classes to tell apart. Add another class folder beside it: {train_dir}/<class name>/<image>."
            )
        if val_dir is not None:
            require_classes(val_dir, self.class_names, "train",
                            "Give both splits the same class folders (check spelling and case).")
        bad = self._scan(train_dir, val_dir)
        Image.MAX_IMAGE_PIXELS = self.max_image_pixels  # what the scan allowed, PIL allows
        train_for_training = self._folder(train_dir, self.train_transform, bad)
        if val_dir is None:
            train_for_eval = self._folder(train_dir, self.eval_transform, bad)
            train_idx, val_idx = stratified_split(train_for_training.targets, self.val_split, self.seed)
            self.train_set = Subset(train_for_training, train_idx)
            self.val_set = Subset(train_for_eval, val_idx)
            self._record_split(train_for_training, train_idx, val_idx)
            targets = [train_for_training.targets[i] for i in train_idx]
        else:
            self.train_set = train_for_training
            self.val_set = self._folder(val_dir, self.eval_transform, bad)
            targets = train_for_training.targets
        if not len(self.val_set):
            raise ConfigError(
                f"No validation images: every class of {train_dir} has a single usable image, so "
                f"data.val_split={self.val_split} holds none out. Add images or a val/ folder."
            )
        self.class_counts = [targets.count(label) for label in range(len(self.class_names))]
        self._warn_imbalance()
        if self.cache_images:
            self._cache_decoded_images()
        log.info("Data: %d train / %d val images, classes %s", len(self.train_set), len(self.val_set), self.class_names)

    def feature_cache(self, backbone_trains: bool) -> CacheFeatures | None:
        """The callback that caches a frozen backbone's features, as ``cache_features``/``cache_views`` ask."""
        if self.device_augment and caches_features(self.cache_features, backbone_trains, True, self.cache_views):
            raise ConfigError("data.device_augment=true and the feature cache both augment the training images; "
                              "set one of them off (data.device_augment=false or data.cache_features=false).")
        return feature_cache(self.cache_features, backbone_trains=backbone_trains, augmented=bool(self.augment),
                             views=self.cache_views, max_gb=self.cache_max_gb)

    def serve_features(self, train_set: Dataset, val_set: Dataset) -> None:
        """Serve precomputed backbone features (``transferlab.features``) instead of images.

        They are in memory already, so loader processes would only add copying.
        """
        self.train_set, self.val_set = train_set, val_set
        self.num_workers = 0
        self.image_cache = None

    def _cache_decoded_images(self) -> None:
        """Decode every image once into memory and make the data sets read from there."""
        folders = [dataset.dataset if isinstance(dataset, Subset) else dataset
                   for dataset in (self.train_set, self.val_set)]
        short_side = self.preprocessing.resize_size if self.cache_images == SHRINK else None
        self.image_cache = DecodedImageCache(folders[0].loader, short_side, int(self.cache_max_gb * BYTES_PER_GB))
        self.image_cache.fill([path for folder in folders for path, _ in folder.samples], self.num_workers)
        for folder in folders:
            folder.loader = self.image_cache

    def _scan(self, train_dir: Path, val_dir: Path | None) -> set[str]:
        """Scan every file; stop on bad ones, or return their paths to leave out (``on_bad_image=skip``)."""
        cache = self.run_dir / SCAN_CACHE if self.run_dir else None
        report = self.scan_report = scan_dataset(train_dir, val_dir, cache, self.hparams.max_image_pixels)
        log_warnings(report)
        if not report.problems:
            return set()
        if self.on_bad_image == "error":
            raise ConfigError(report.error_message(self.root))
        skipped = self.run_dir / SKIPPED if self.run_dir else None
        if skipped:
            write_skipped(skipped, report.problems)
        log.warning("Skipping %d bad image file(s) (data.on_bad_image=skip): %s%s", len(report.problems),
                    count_kinds(report.problems), f"; listed in {skipped}" if skipped else "")
        return report.bad_paths

    def _folder(self, split: Path, transform: Callable, bad: set[str]) -> ImageFolder:
        """The split's ImageFolder without the ``bad`` files."""
        usable = lambda path: is_image(path) and path not in bad
        try:
            return ClassFolder(str(split), transform=transform, loader=RGBLoader(self.max_image_pixels),
                               is_valid_file=usable)
        except FileNotFoundError as error:  # a class whose every image was skipped
            raise ConfigError(f"After leaving out the bad image files of {split}: {error} "
                              "Add usable images to that class, or remove its folder.") from error

    def _warn_imbalance(self) -> None:
        smallest, largest = min(self.class_counts), max(self.class_counts)
        if largest > IMBALANCE_RATIO * smallest:
            counts = ", ".join(f"{name} {count}"
                               for name, count in zip(self.class_names, self.class_counts, strict=True))
            log.warning("Classes are imbalanced beyond 1:%d in the training images (%s); "
                        "loss.class_weights=balanced weights the loss by inverse class frequency.",
                        IMBALANCE_RATIO, counts)

    def _check_layout(self) -> tuple[Path, Path | None]:
        if not self.root.is_dir():
            raise ConfigError(
                f"data.root={self.root} does not exist. Point data.root at a folder holding train/ "
                "(and optionally val/) with one sub-folder of images per class, or use data=hymenoptera "
                "for the ants/bees example set."
            )
        train_dir, val_dir = self.root / "train", self.root / "val"
        if not train_dir.is_dir():
            raise ConfigError(
                f"data.root={self.root} has no train/ folder. Expected {train_dir}/<class>/<image> "
                f"(and optionally {val_dir}/<class>/<image>); found: "
                f"{', '.join(sorted(p.name for p in self.root.iterdir())[:10]) or 'nothing'}."
            )
        if not val_dir.is_dir():
            if not 0.0 < self.val_split < 1.0:
                raise ConfigError(
                    f"{self.root} has no val/ folder and data.val_split={self.val_split} cannot carve "
                    "one out of train/. Set data.val_split between 0 and 1, or add a val/ folder."
                )
            return train_dir, None
        return train_dir, val_dir

    def _record_split(self, dataset: ImageFolder, train_idx: list[int], val_idx: list[int]) -> None:
        if self.run_dir is None or not is_global_zero():  # DDP: rank zero writes the run folder
            return
        relative = lambda i: os.path.relpath(dataset.samples[i][0], dataset.root)
        record = {"val_split": self.val_split, "seed": self.seed,
                  "train": [relative(i) for i in train_idx], "val": [relative(i) for i in val_idx]}
        write_json_atomically(self.run_dir / SPLIT, record)
        log.info("No val/ folder: held out %d images; split recorded in %s", len(val_idx), self.run_dir / SPLIT)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, sampler=EpochShuffle(len(self.train_set), self.seed),
                            collate_fn=collate_images if self.device_augment else None)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch of uint8 images of different sizes (``device_augment``) is augmented on its device."""
        images, labels = batch
        return (self.device_augment(images), labels) if isinstance(images, list) else batch

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None, collate_fn: Callable | None = None,
                ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=False,  # a split smaller than one batch still gives a batch
        )
