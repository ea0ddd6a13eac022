"""The speed switches that act on the model: memory format and ``torch.compile`` (configured in conf/speed/)."""

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

FULL_PRECISIONS = ("32-true", "32", "64-true", "64")


def use_channels_last(setting: bool | str, trainer: DictConfig) -> bool:
    """``channels_last``: true, false, or ``auto``: on unless the run is on a GPU at full precision.

    On a GPU without autocast, NHWC convolutions can be slower; elsewhere they were measured faster
    (docs/benchmarks.md).
    """
    if setting != "auto":
        return bool(setting)
    return not uses_gpu(trainer) or str(trainer.get("precision", "32-true")) not in FULL_PRECISIONS


def uses_gpu(trainer: DictConfig) -> bool:
    """Whether the configured ``trainer`` runs on a CUDA GPU (``accelerator=auto``: where one is available)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def compile_enabled(cfg: DictConfig) -> bool:
    """Whether the run's ``compile.enabled`` is set."""
    return bool((cfg.get("compile") or {}).get("enabled"))


def compiled(model: pl.LightningModule, settings: DictConfig | None) -> pl.LightningModule:
    """``torch.compile(model)`` when ``compile.enabled``; Lightning trains and checkpoints the original module."""
    if not settings or not settings.enabled:
        return model
    return torch.compile(model, mode=settings.get("mode"), backend=settings.get("backend", "inductor"))


def compile_summary(first_step_s: float, later_steps_s: list[float], eager_step_s: float | None) -> str:
    """One line on what ``torch.compile`` cost and gave: the first step (compilation included), the median later
    step and, where the setup probe timed one, the eager step at the same shape."""
    text = f"torch.compile: the first training step took {first_step_s:.1f} s (compilation included)"
    if not later_steps_s:
        return text + "; no later step in the first epoch to compare."
    later = statistics.median(later_steps_s)
    text += f", later steps {later:.3f} s (median)"
    if eager_step_s is None:
        return text + "; no eager step was timed (speed_probe=false), so whether it is faster is not known."
    if later < eager_step_s:
        gained = eager_step_s - later
        return (text + f" against {eager_step_s:.3f} s eager (setup probe): {eager_step_s / later:.2f}x faster; the "
                f"compilation pays for itself after about {first_step_s / gained:.0f} steps.")
    return (text + f" against {eager_step_s:.3f} s eager (setup probe): not faster. HINT: set compile.enabled=false "
            "(or try compile.mode=max-autotune on a GPU).")


class CompileReport(Callback):
    """Times the training steps of the first epoch and logs ``compile_summary`` at its end.

    ``eager_step_s``: a callable giving the eager step time the setup probe measured, or None.
    """

    def __init__(self, eager_step_s: Callable[[], float | None]) -> None:
        self.eager_step_s = eager_step_s
        self.steps_s: list[float] = []
        self._started: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == 0:
            self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._started is not None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.steps_s.append(time.perf_counter() - self._started)
            self._started = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0 and self.steps_s and trainer.is_global_zero:
            log.info("%s", compile_summary(self.steps_s[0], self.steps_s[1:], self.eager_step_s()))
