"""The LightningDataModule over an image folder with ``train/`` and ``val/`` (or a carved-out val split)."""

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from transferlab.download import fetch_dataset
from transferlab.errors import ConfigError
from transferlab.images import load_rgb

log = logging.getLogger(__name__)

MAX_DEFAULT_WORKERS = 8  # beyond this, loader processes mostly compete for the same cores


def default_num_workers() -> int:
    """Loader processes: the CPU cores this process may use, capped."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_DEFAULT_WORKERS)


def class_folders(split: Path) -> list[str]:
    """Class names of an ImageFolder split, failing clearly on empty classes."""
    classes = sorted(entry.name for entry in os.scandir(split) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ConfigError(
            f"{split} has no class folders. Put each class's images in their own sub-folder: "
            f"{split}/<class name>/<image>."
        )
    empty = [name for name in classes if not _has_images(split / name)]
    if empty:
        raise ConfigError(
            f"Class folder(s) with no images in {split}: {', '.join(empty)}. Add images "
            f"({', '.join(IMG_EXTENSIONS)}) or remove the folder(s)."
        )
    return classes


def _has_images(folder: Path) -> bool:
    return any(has_file_allowed_extension(name, IMG_EXTENSIONS) for _, _, names in os.walk(folder) for name in names)


def stratified_split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded split that keeps every class's share in both parts (>= 1 val image per class)."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in sorted(set(targets)):
        indices = [i for i, t in enumerate(targets) if t == label]
        order = torch.randperm(len(indices), generator=generator).tolist()
        n_val = min(max(1, round(len(indices) * val_fraction)), len(indices) - 1) if len(indices) > 1 else 0
        val += [indices[i] for i in order[:n_val]]
        train += [indices[i] for i in order[n_val:]]
    return sorted(train), sorted(val)


class EpochShuffle(Sampler[int]):
    """A new random order every epoch that depends only on (seed, epoch), as DistributedSampler's does.

    So a resumed run sees epoch N in the same order as an uninterrupted one, whatever else
    drew from the global random generator before it. Lightning calls ``set_epoch`` each epoch.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class ImageFolderDataModule(pl.LightningDataModule):
    """``root/train`` and ``root/val`` ImageFolder splits, one sub-folder per class.

    Without ``root/val`` a stratified, seeded ``val_split`` of ``root/train`` is held out and the
    file lists of both parts are written to ``split_file``. With ``download`` (a dict with ``url``,
    ``folder`` and optional ``sha256``) a missing ``root`` that is the download's target is
    downloaded first.
    """

    def __init__(
        self,
        root: str,
        train_transform: Callable,
        eval_transform: Callable,
        batch_size: int = 32,
        num_workers: int | None = None,
        val_split: float = 0.2,
        seed: int = 0,
        download: dict | None = None,
        split_file: str | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_transform", "eval_transform", "split_file"])
        self.root = Path(root).expanduser()
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.val_split = val_split
        self.seed = seed
        self.download = download
        self.split_file = Path(split_file) if split_file else None
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.class_names: list[str] = []
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
        train_for_training = ImageFolder(str(train_dir), transform=self.train_transform, loader=load_rgb)
        if val_dir is None:
            train_for_eval = ImageFolder(str(train_dir), transform=self.eval_transform, loader=load_rgb)
            train_idx, val_idx = stratified_split(train_for_training.targets, self.val_split, self.seed)
            self.train_set = Subset(train_for_training, train_idx)
            self.val_set = Subset(train_for_eval, val_idx)
            self._record_split(train_for_training, train_idx, val_idx)
        else:
            val_classes = class_folders(val_dir)
            if val_classes != self.class_names:
                raise ConfigError(
                    f"The classes of {val_dir} differ from those of {train_dir}: only in train: "
                    f"{sorted(set(self.class_names) - set(val_classes)) or 'none'}; only in val: "
                    f"{sorted(set(val_classes) - set(self.class_names)) or 'none'}. Give both splits "
                    "the same class folders (check spelling and case)."
                )
            self.train_set = train_for_training
            self.val_set = ImageFolder(str(val_dir), transform=self.eval_transform, loader=load_rgb)
        log.info("Data: %d train / %d val images, classes %s", len(self.train_set), len(self.val_set), self.class_names)

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
        if self.split_file is None:
            return
        relative = lambda i: os.path.relpath(dataset.samples[i][0], dataset.root)  # noqa: E731
        record = {"val_split": self.val_split, "seed": self.seed,
                  "train": [relative(i) for i in train_idx], "val": [relative(i) for i in val_idx]}
        self.split_file.parent.mkdir(parents=True, exist_ok=True)
        self.split_file.write_text(json.dumps(record, indent=1))
        log.info("No val/ folder: held out %d images; split recorded in %s", len(val_idx), self.split_file)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, sampler=EpochShuffle(len(self.train_set), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
