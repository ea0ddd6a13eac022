"""Stopping a run whose loss has stopped being a number."""

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from transferlab.errors import ConfigError
from transferlab.layout import last_checkpoint


class NonFiniteLossError(ConfigError):
    """The training loss became NaN or infinite."""


class FiniteLoss(Callback):
    """Stops training when the loss becomes NaN or infinite, before that epoch is checkpointed.

    The first bad batch is tracked on the device (no host sync per step) and checked once per
    epoch, before validation and checkpointing, so ``last.ckpt`` stays the last good state.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.last_checkpoint = last_checkpoint(run_dir)
        self._first_bad_batch: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_bad_batch = torch.tensor(-1, device=pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad_batch is None:
            return
        is_new_bad = ~torch.isfinite(loss.detach()) & (self._first_bad_batch < 0)
        self._first_bad_batch = torch.where(is_new_bad, batch_idx, self._first_bad_batch)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or self._first_bad_batch is None:
            return
        batch = int(self._first_bad_batch)
        if batch < 0:
            return
        rates = ", ".join(f"{g.get('name', i)}={g['lr']:.3g}" for i, g in enumerate(trainer.optimizers[0].param_groups))
        kept = f" The last good checkpoint is {self.last_checkpoint}." if self.last_checkpoint.is_file() else ""
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite in epoch {trainer.current_epoch}, batch {batch} "
            f"(learning rates {rates}). The learning rate is most likely too high: lower optimizer.lr "
            f"(e.g. 10x), or clip gradients with trainer.gradient_clip_val=1.0.{kept}"
        )
