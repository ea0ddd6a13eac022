"""Building a run's pieces from its config: the data module, the model, the callbacks, each through Hydra's
``instantiate`` with what the data and the machine decide at run time. Training and the learning-rate finder build
the same way."""

import logging
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ProgressBar
from omegaconf import DictConfig

from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.data.device_augment import use_device_augment
from transferlab.data.features import CacheFeatures, caches_features, views_for
from transferlab.errors import ConfigError
from transferlab.layout import SPEED_PROBE, TRAINABILITY
from transferlab.model.backbones import BackboneSpec
from transferlab.model.modes import Mode, get_mode
from transferlab.model.module import TransferClassifier, class_weights
from transferlab.run.speed import CompileReport, compile_enabled, use_channels_last, uses_gpu
from transferlab.run.speed_probe import SpeedProbe
from transferlab.run.trainability import Trainability

log = logging.getLogger(__name__)

USER_ERRORS = (ConfigError, MisconfigurationException)  # what the user can fix: a message and exit code 2


def build(config: Any, **kwargs: Any) -> Any:
    """``instantiate(config, **kwargs)``, with a user error raised inside it unwrapped from Hydra's
    ``InstantiationException``, so that it ends the run with its own message (a bad weights file while
    the model is built, ``trainer.accelerator=cuda`` on a machine without a GPU)."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, USER_ERRORS):
            raise error.__cause__ from None
        raise


def build_callbacks(cfg: DictConfig, mode: Mode, datamodule: ImageFolderDataModule) -> list[Callback]:
    """The configured callbacks, the mode's freeze callback, the trainability table, the speed probe and the data's
    feature cache, where they apply."""
    callbacks = [build(node) for node in cfg.get("callbacks", {}).values() if node is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    backbone_trains = mode.backbone_trains(cfg.mode)
    cache = datamodule.feature_cache(backbone_trains=backbone_trains)
    probe = speed_probe(cfg, backbone_trains, datamodule, cache)
    report = CompileReport(probe.eager_step_s if probe else lambda: None) if compile_enabled(cfg) else None
    extra = [mode.callback(cfg.mode), Trainability(Path(cfg.paths.output_dir) / TRAINABILITY),  # after the freeze
             probe, cache, report]  # the probe first: the feature cache extracts in the format it chose
    return callbacks + [callback for callback in extra if callback is not None]


def speed_probe(cfg: DictConfig, backbone_trains: bool, datamodule: ImageFolderDataModule,
                cache: CacheFeatures | None) -> SpeedProbe | None:
    """The setup probe that ``speed_probe`` asks for (``conf/speed/default.yaml``), its budget a share of the images
    the run's model will process; a resumed run reuses its record."""
    if not cfg.get("speed_probe", True):
        return None
    epochs = cfg.trainer.get("max_epochs")
    train_images, val_images = len(datamodule.train_set), len(datamodule.val_set)
    if cache is not None:
        images_ahead = cache.images_ahead(train_images, val_images, epochs)
    else:
        images_ahead = epochs * (train_images + val_images) if epochs is not None and epochs >= 0 else None
    # A deterministic run computes alike every time: no memory format chosen by a timing.
    deterministic = cfg.trainer.get("deterministic")
    formats = use_channels_last(cfg.channels_last, cfg.trainer) if deterministic else cfg.channels_last
    return SpeedProbe(formats, train=backbone_trains, image_size=datamodule.preprocessing.crop_size,
                      batch_size=datamodule.batch_size, record=Path(cfg.paths.output_dir) / SPEED_PROBE,
                      reuse=bool(cfg.get("resume")), time_eager=compile_enabled(cfg), images_ahead=images_ahead)


def build_datamodule(cfg: DictConfig, output_dir: Path) -> ImageFolderDataModule:
    """The configured data module, its preprocessing from the weights the backbone starts from, its augmentation
    on the device where ``data.device_augment`` says so for this run."""
    mode = get_mode(cfg.mode.name)
    weights = mode.initial_weights(cfg.backbone.weights)
    data, augmented = cfg.data, bool(cfg.data.augment)
    caches = caches_features(data.cache_features, mode.backbone_trains(cfg.mode), augmented, data.cache_views)
    on_device = use_device_augment(data.get("device_augment", False), uses_gpu(cfg.trainer), augmented, caches)
    settings = {"device_augment": on_device}
    if caches and data.cache_images and views_for(data.cache_views, augmented, cfg.trainer.get("max_epochs")) == 1:
        log.info("Image cache off: the feature cache reads each image once, so keeping it decoded saves nothing.")
        settings["cache_images"] = False
    make_datamodule = build(data, _partial_=True)  # partial: the preprocessing stays an object
    preprocessing = BackboneSpec.from_config(cfg.backbone, weights=weights).preprocessing()
    return make_datamodule(preprocessing=preprocessing, seed=cfg.seed,
                           run_dir=str(output_dir), **settings)


def build_model(cfg: DictConfig, datamodule: ImageFolderDataModule) -> TransferClassifier:
    """The configured LightningModule, completed with what the data and the machine decide."""
    return build(cfg.model, class_names=datamodule.class_names,
                       class_weights=class_weights(cfg.loss.class_weights, datamodule.class_counts),
                       preprocessing=datamodule.preprocessing.to_dict(),
                       channels_last=use_channels_last(cfg.channels_last, cfg.trainer))
