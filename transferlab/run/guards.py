"""Stopping a run whose loss or weights have stopped being numbers, before a checkpoint keeps them."""

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from transferlab.errors import ConfigError
from transferlab.layout import last_checkpoint


class NonFiniteLossError(ConfigError):
    """The training loss, the validation loss or the model's weights became NaN or infinite."""


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding a NaN or an infinity (one host sync if none)."""
    tensors = [(name, tensor) for name, tensor in [*module.named_parameters(), *module.named_buffers()]
               if tensor.is_floating_point()]
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in tensors])
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(tensors, finite.tolist(), strict=True) if not ok]


class FiniteLoss(Callback):
    """Stops training when the loss, the validation loss or a weight becomes NaN or infinite, before a checkpoint.

    The first bad batch is tracked on the device (no host sync per step) and checked once per
    epoch, before validation; the validation loss and every parameter and buffer (BatchNorm's
    running statistics too) are checked after validation, before checkpoints are written
    (Lightning runs checkpoint callbacks last), so ``last.ckpt`` and ``best.ckpt`` stay good states.
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
        self._check_weights(trainer, pl_module)  # without validation, checkpoints are written next

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        val_loss = trainer.callback_metrics.get("val/loss")
        if val_loss is not None and not torch.isfinite(val_loss):
            raise NonFiniteLossError(
                f"The validation loss became {float(val_loss)} in epoch {trainer.current_epoch} while the training "
                f"loss stayed finite ({self._rates(trainer)}): the weights have most likely grown out of range. "
                f"{self._advice()}"
            )
        self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bad = non_finite_tensors(pl_module)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteLossError(
                f"{len(bad)} parameter(s) or buffer(s) became NaN or infinite in epoch {trainer.current_epoch} "
                f"({shown}) while the training loss stayed finite ({self._rates(trainer)}). {self._advice()}"
            )

    @staticmethod
    def _rates(trainer: pl.Trainer) -> str:
        groups = trainer.optimizers[0].param_groups
        return "learning rates " + ", ".join(f"{g.get('name', i)}={g['lr']:.3g}" for i, g in enumerate(groups))

    def _advice(self) -> str:
        kept = f" The last good checkpoint is {self.last_checkpoint}." if self.last_checkpoint.is_file() else ""
        return ("The learning rate is most likely too high: lower optimizer.lr (e.g. 10x), or clip gradients "
                f"with trainer.gradient_clip_val=1.0.{kept}")

    def _check(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or self._first_bad_batch is None:
            return
        batch = int(self._first_bad_batch)
        if batch < 0:
            return
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite in epoch {trainer.current_epoch}, batch {batch} "
            f"({self._rates(trainer)}). {self._advice()}"
        )
