"""Backbone features computed once, for runs whose backbone never trains (``feature_extract``).

A frozen backbone in eval mode maps an input to the same features in every epoch, so running it
every epoch repeats the same work. ``CacheFeatures`` runs it once over the validation images and
``views`` times over the training images before training starts; the data module then serves
the features and only the head runs each epoch. Without augmentation one view is the exact
input of every epoch, and the head trains as it would on images (tested). With augmentation,
each image gets ``views`` fixed augmented versions and every epoch draws one of them, seeded by
(seed, epoch) so a resumed run draws as an uninterrupted one does.
"""

import contextlib
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferlab.data.image_cache import BYTES_PER_GB
from transferlab.errors import ConfigError

log = logging.getLogger(__name__)


CACHE_SETTINGS = ("auto", True, False)
AUTO = "auto"
# data.cache_views=auto: one cached view per EPOCHS_PER_VIEW epochs. Measured on a pretrained ResNet-18 (docs/
# benchmarks.md, "How many cached views"): one view drawn for all of 10 or 25 epochs kept best val accuracy within
# seed-to-seed noise of fresh augmentation, as did 2, 3, 5 and 8; longer runs get more views, so that no view is
# seen more often than it was there. MAX_AUTO_VIEWS, the most measured, also serves runs without an epoch limit.
EPOCHS_PER_VIEW = 25
MAX_AUTO_VIEWS = 8


def auto_views(max_epochs: int | None) -> int:
    """The views ``data.cache_views=auto`` caches for a run of ``max_epochs`` (None or -1: no limit)."""
    if max_epochs is None or max_epochs < 0:
        return MAX_AUTO_VIEWS
    return min(max(1, math.ceil(max_epochs / EPOCHS_PER_VIEW)), MAX_AUTO_VIEWS)


def views_for(views: int | str, augmented: bool, max_epochs: int | None) -> int:
    """Feature sets the cache computes per training image: 1 without augmentation, else ``data.cache_views``
    (``auto``: ``auto_views``)."""
    if not augmented:
        return 1
    return auto_views(max_epochs) if views == AUTO else int(views)


def check_views(views: int | str | None) -> None:
    """``data.cache_views`` is ``auto``, null or a whole number of at least 1."""
    if views is None or views == AUTO or (isinstance(views, int) and not isinstance(views, bool) and views >= 1):
        return
    raise ConfigError(f"data.cache_views={views!r} is not auto, null or a whole number of at least 1: auto caches "
                      "as many augmented views per image as keep accuracy with fresh augmentation, K caches K, "
                      "null augments afresh every epoch.")


def caches_features(setting: str | bool, backbone_trains: bool, augmented: bool, views: int | str | None) -> bool:
    """Whether ``data.cache_features``/``data.cache_views`` cache a frozen backbone's features (``feature_cache``)."""
    return setting is not False and not backbone_trains and (not augmented or views is not None)


def feature_cache(setting: str | bool, backbone_trains: bool, augmented: bool, views: int | str | None,
                  max_gb: float) -> "CacheFeatures | None":
    """The ``CacheFeatures`` callback that ``data.cache_features`` asks for, or None.

    ``auto`` caches where the backbone never trains and either the cache is exact (no
    augmentation) or ``data.cache_views`` says how many augmented views to keep (``auto``: by the
    run's length, ``auto_views``); ``data.cache_views=null`` augments afresh every epoch.
    """
    if setting not in CACHE_SETTINGS:
        raise ConfigError(f"data.cache_features={setting!r} is not one of auto, true, false.")
    check_views(views)
    if setting is True and backbone_trains:
        raise ConfigError("data.cache_features=true needs a backbone that never trains (mode=feature_extract); "
                          "in this mode it trains, so its features change every step. Use "
                          "data.cache_features=auto or false.")
    if setting is True and augmented and views is None:
        raise ConfigError("data.cache_features=true with augmentation on (data.augment) needs data.cache_views: "
                          "auto or K, how many augmented versions of each training image to cache. Or set "
                          "data.augment=[] for an exact cache.")
    if not caches_features(setting, backbone_trains, augmented, views):
        if setting is not False and not backbone_trains:
            log.info("Feature cache off: data.cache_views=null augments every image afresh each epoch, so the frozen "
                     "backbone runs every epoch. data.cache_views=auto (the default) or K caches augmented views once.")
        return None
    return CacheFeatures(views if augmented else 1, max_gb)


class FeatureViews(Dataset):
    """(feature, label) pairs from ``features`` of shape (views, N, D); ``set_epoch`` picks each image's view."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        self.features, self.labels, self.seed = features, labels, seed
        self.chosen = torch.zeros(len(labels), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Draw the view each image shows this epoch; depends only on (seed, epoch)."""
        if len(self.features) > 1:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self.chosen = torch.randint(len(self.features), (len(self.labels),), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[self.chosen[index], index], self.labels[index]


@torch.no_grad()
def extract_features(forward: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, passes: int,
                     batch_size: int, num_workers: int, device: torch.device, seed: int,
                     forward_context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` (a backbone's) of every item of ``dataset``, ``passes`` times: ((passes, N, D) float32, (N,) labels).

    Each pass draws its random augmentation from its own seed, so the features are reproducible.
    ``forward_context`` wraps the backbone's forward (the trainer's precision: autocast for mixed).
    """
    passes_features, labels = [], None
    for index in range(passes):
        generator = torch.Generator().manual_seed(seed + index)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            generator=generator, pin_memory=device.type == "cuda")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + index)  # augmentation drawn in this process (num_workers=0)
            batches = []
            for images, targets in loader:
                with forward_context():
                    features = forward(images.to(device, non_blocking=True))
                batches.append((features.float().cpu(), targets))
        passes_features.append(torch.cat([features for features, _ in batches]))
        labels = torch.cat([targets for _, targets in batches])
    return torch.stack(passes_features), labels


def frozen_features(network: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                    channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``network`` frozen (eval mode, no gradients) over every item of ``dataset`` once: ((N, D) float32, (N,) labels).

    ``channels_last`` runs it with NHWC weights and batches, as ``TransferClassifier`` does.
    """
    network = network.to(device).eval()
    if channels_last:
        network = network.to(memory_format=torch.channels_last)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return network(images.contiguous(memory_format=torch.channels_last) if channels_last else images)

    features, labels = extract_features(forward, dataset, 1, batch_size, num_workers, device, seed=0)
    return features[0], labels


class CacheFeatures(Callback):
    """Replaces the data module's image data sets by the frozen backbone's features at the start of fitting.

    ``views``: feature sets computed per training image (1 when the training transform is
    deterministic). When the features would take more than ``max_gb``, the run trains on
    images as usual. The data module needs ``train_set``, ``val_set``, ``batch_size``,
    ``num_workers``, ``seed`` and ``serve_features`` (``ImageFolderDataModule`` has them).
    """

    def __init__(self, views: int | str = 1, max_gb: float = 2.0) -> None:
        check_views(views)
        self.setting, self.max_gb = views, max_gb
        self.views = 1 if views == AUTO else views  # auto: set from the run's length at setup
        self.train_features: FeatureViews | None = None

    def images_ahead(self, train_images: int, val_images: int, max_epochs: int | None) -> int:
        """How many images the backbone will see: each view of the training images and the val images, once."""
        return views_for(self.setting, True, max_epochs) * train_images + val_images

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Runs before the optimizer and the data loaders are built, so both see the features."""
        datamodule = trainer.datamodule
        if stage != "fit" or isinstance(datamodule.train_set, FeatureViews):
            return
        started = time.perf_counter()
        if self.setting == AUTO:
            self.views = auto_views(trainer.max_epochs)
            log.info("Feature cache: data.cache_views=auto caches %d augmented view(s) per image for a run of %s "
                     "epochs (one per %d epochs, which kept accuracy within noise of fresh augmentation: "
                     "docs/benchmarks.md); data.cache_views=null augments afresh every epoch.", self.views,
                     trainer.max_epochs, EPOCHS_PER_VIEW)
        was_training = pl_module.backbone.training
        pl_module.backbone.to(trainer.strategy.root_device).eval()
        try:
            cached = self._extract(trainer, pl_module, datamodule)
        finally:  # the mode's callback sets the mode each epoch; Lightning warns of modules left in eval
            pl_module.backbone.train(was_training)
        if cached is None:
            return
        self.train_features, val_features = cached
        datamodule.serve_features(self.train_features, val_features)
        log.info("Feature cache: the frozen backbone ran once over %d val images and %d time(s) over %d train "
                 "images (%.1f s); only the head runs each epoch (data.cache_features=false to turn off).",
                 len(val_features), self.views, len(self.train_features), time.perf_counter() - started)

    def _extract(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                 datamodule: Any) -> tuple[FeatureViews, FeatureViews] | None:
        """(train, val) feature sets, or None when they would not fit in ``max_gb``."""
        extract = partial(extract_features, pl_module.features, batch_size=datamodule.batch_size,
                          num_workers=datamodule.num_workers, device=trainer.strategy.root_device,
                          seed=datamodule.seed, forward_context=trainer.precision_plugin.forward_context)
        val_features, val_labels = extract(datamodule.val_set, 1)
        row_bytes = val_features.shape[-1] * val_features.element_size()
        needed = (self.views * len(datamodule.train_set) + len(val_labels)) * row_bytes
        if needed > self.max_gb * BYTES_PER_GB:
            log.warning("Feature cache off: %d view(s) of %d training images would take %.2f GB, more than "
                        "data.cache_max_gb=%.3g; the backbone runs every epoch. Raise data.cache_max_gb or lower "
                        "data.cache_views.", self.views, len(datamodule.train_set), needed / BYTES_PER_GB, self.max_gb)
            return None
        train_features, train_labels = extract(datamodule.train_set, self.views)
        return FeatureViews(train_features, train_labels, datamodule.seed), FeatureViews(val_features, val_labels)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.train_features is not None:
            self.train_features.set_epoch(trainer.current_epoch)
