"""Training entry point: ``python -m transferlab.train [group=choice ...] [key=value ...]``."""

import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from transferlab.backbones import check_name, preprocessing_weights
from transferlab.data import ImageFolderDataModule
from transferlab.errors import ConfigError
from transferlab.features import feature_cache
from transferlab.files import write_json_atomically
from transferlab.guards import FiniteLoss
from transferlab.module import TransferClassifier, class_weights
from transferlab.ranks import check_launch, is_global_zero, log_to_console_only
from transferlab.results import RunSummary
from transferlab.resume import (
    AtomicCheckpointIO,
    CheckpointOnInterrupt,
    RandomState,
    checkpoint_to_resume,
)
from transferlab.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


def initial_weights(cfg: DictConfig) -> str | None:
    """The weights the backbone starts from: none in ``scratch`` mode, else ``backbone.weights``."""
    return cfg.backbone.weights if cfg.mode.pretrained else None


def build_datamodule(cfg: DictConfig, output_dir: Path) -> ImageFolderDataModule:
    """The image-folder data module, with preprocessing taken from the backbone's weights."""
    weights = preprocessing_weights(cfg.backbone.name, initial_weights(cfg))
    augment = instantiate(cfg.data.augment) if cfg.data.augment else []
    download = OmegaConf.to_container(cfg.data.download, resolve=True) if cfg.data.get("download") else None
    evaluation = eval_transform(weights, cfg.data.image_size)
    return ImageFolderDataModule(
        root=cfg.data.root,
        train_transform=train_transform(weights, cfg.data.image_size, augment),
        eval_transform=evaluation,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        val_split=cfg.data.val_split,
        seed=cfg.seed,
        download=download,
        split_file=str(output_dir / "split.json"),
        on_bad_image=cfg.data.get("on_bad_image", "error"),
        max_image_pixels=cfg.data.get("max_image_pixels"),
        run_dir=str(output_dir),
        pin_memory=cfg.data.get("pin_memory"),
        cache_images=cfg.data.get("cache_images", False),
        cache_max_gb=cfg.data.get("cache_max_gb", 2.0),
        cache_short_side=evaluation.resize_size[0],
    )


def build_model(cfg: DictConfig, class_names: list[str], class_counts: list[int] | None = None) -> TransferClassifier:
    """The LightningModule, from primitives only, so checkpoints load without Hydra."""
    container = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None
    return TransferClassifier(
        backbone=cfg.backbone.name,
        class_names=class_names,
        weights=initial_weights(cfg),
        classifier=cfg.backbone.get("classifier"),
        head_hidden=list(cfg.head.hidden),
        head_dropout=cfg.head.dropout,
        mode=cfg.mode.name,
        backbone_lr_ratio=cfg.mode.backbone_lr_ratio,
        optimizer=container(cfg.optimizer),
        scheduler=container(cfg.scheduler),
        image_size=cfg.data.image_size,
        label_smoothing=cfg.get("loss", {}).get("label_smoothing", 0.0),
        class_weights=class_weights(cfg.get("loss", {}).get("class_weights"), class_counts or []),
        channels_last=use_channels_last(cfg.get("channels_last", False), cfg.trainer),
    )


def use_channels_last(setting: bool | str, trainer: DictConfig) -> bool:
    """``channels_last``: true, false, or ``auto``: on unless the run is on a GPU at 32-bit precision."""
    if setting != "auto":
        return bool(setting)
    accelerator = str(trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return not on_gpu or str(trainer.get("precision", "32-true")) not in ("32-true", "32", "64-true", "64")


def compiled(model: TransferClassifier, settings: DictConfig | None) -> pl.LightningModule:
    """``torch.compile(model)`` when ``compile.enabled``; Lightning trains and checkpoints the original module."""
    if not settings or not settings.enabled:
        return model
    return torch.compile(model, mode=settings.get("mode"), backend=settings.get("backend", "inductor"))


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The configured callbacks plus the transfer mode's finetuning callback, if it has one."""
    callbacks = [instantiate(node) for node in cfg.get("callbacks", {}).values() if node is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    if cfg.mode.get("callback"):
        callbacks.append(instantiate(cfg.mode.callback))
    cache = feature_cache(cfg.data.get("cache_features", False), backbone_trains=cfg.mode.name != "feature_extract",
                          augmented=bool(cfg.data.augment), views=cfg.data.get("cache_views"),
                          max_gb=cfg.data.get("cache_max_gb", 2.0))
    return [*callbacks, cache] if cache else callbacks


def train(cfg: DictConfig, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return the contents of its ``results.json``.

    ``callbacks`` are added to the configured ones (for notebooks and tests that watch a run).
    """
    pl.seed_everything(cfg.seed, workers=True)
    check_name(cfg.backbone.name)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg, output_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg, datamodule.class_names, datamodule.class_counts)
    summary = RunSummary(
        output_dir / "results.json",
        {"backbone": cfg.backbone.name, "mode": cfg.mode.name, "weights": initial_weights(cfg)},
    )
    safety = [RandomState(), CheckpointOnInterrupt(), FiniteLoss()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[*build_callbacks(cfg), *safety, summary, *(callbacks or [])],
                                      logger=instantiate(cfg.logger) if cfg.get("logger") else False,
                                      plugins=[AtomicCheckpointIO()])
    check_launch(trainer)
    resume_from = None
    if cfg.get("resume"):
        resume_from = checkpoint_to_resume(cfg.callbacks.last_checkpoint.dirpath, output_dir)
        log.info("Resuming from %s", resume_from)
    trainer.fit(compiled(model, cfg.get("compile")), datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    results = summary.results
    if trainer.is_global_zero:
        log.info(
            "Run folder %s: best val/acc %.4f at epoch %s of %d, %.1f s (%s train images/s).",
            output_dir, results["best_val_acc"] or float("nan"), results["best_epoch"],
            results["epochs_run"], results["train_time_s"], results["train_images_per_s"],
        )
    return results


def record_failure(output_dir: Path, error: BaseException) -> None:
    """Leave ``failure.json`` in the run folder, so a sweep report can say why this run has no results.

    Under DDP every process fails, and rank zero writes it.
    """
    if not is_global_zero():
        return
    write_json_atomically(output_dir / "failure.json", {
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
    })


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns best val/acc for sweepers that optimise it.

    In a multirun, a failed run is recorded and logged and the sweep goes on; a single run
    exits non-zero (2 for bad input, with its message and no traceback).
    """
    if not is_global_zero():  # a DDP process that Lightning (or torchrun, srun) started: rank zero keeps the log
        log_to_console_only(HydraConfig.get().job.name)
    try:
        return train(cfg)["best_val_acc"]
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)  # the shell's convention for "ended by SIGTERM"; last.ckpt is saved
    except Exception as error:
        record_failure(Path(cfg.paths.output_dir), error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("Run failed, the sweep goes on: %s", error, exc_info=not isinstance(error, ConfigError))
            return None
        if isinstance(error, ConfigError):
            log.error("%s", error)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
