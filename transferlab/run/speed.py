"""The speed switches that act on the model: memory format and ``torch.compile`` (configured in conf/speed/)."""

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig

FULL_PRECISIONS = ("32-true", "32", "64-true", "64")


def use_channels_last(setting: bool | str, trainer: DictConfig) -> bool:
    """``channels_last``: true, false, or ``auto``: on unless the run is on a GPU at full precision.

    On a GPU without autocast, NHWC convolutions can be slower; elsewhere they were measured faster
    (docs/benchmarks.md).
    """
    if setting != "auto":
        return bool(setting)
    accelerator = str(trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return not on_gpu or str(trainer.get("precision", "32-true")) not in FULL_PRECISIONS


def compiled(model: pl.LightningModule, settings: DictConfig | None) -> pl.LightningModule:
    """``torch.compile(model)`` when ``compile.enabled``; Lightning trains and checkpoints the original module."""
    if not settings or not settings.enabled:
        return model
    return torch.compile(model, mode=settings.get("mode"), backend=settings.get("backend", "inductor"))
