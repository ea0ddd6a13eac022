"""``results.json``: what a run achieved, written by a callback when training ends."""

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from transferlab.files import write_json_atomically

log = logging.getLogger(__name__)


class RunSummary(Callback):
    """Tracks per-epoch validation results and training throughput; writes ``results.json`` at the end."""

    def __init__(self, path: str | Path, run_info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.run_info = run_info
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0
        self._epoch_started: float | None = None
        self._fit_started = 0.0
        self.results: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_images += len(batch[1]) * trainer.world_size

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_train_clock()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_train_clock()
        if self.history and self.history[-1]["epoch"] == trainer.current_epoch:
            metrics = trainer.callback_metrics
            self.history[-1].update({key.replace("/", "_"): float(metrics[key]) for key in ("train/loss", "train/acc")
                                     if key in metrics})

    def _stop_train_clock(self) -> None:
        if self._epoch_started is not None:
            self.train_seconds += time.perf_counter() - self._epoch_started
            self._epoch_started = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.history.append({"epoch": trainer.current_epoch, "val_acc": float(metrics["val/acc"]),
                             "val_loss": float(metrics["val/loss"])})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.results = self.summarise(trainer, pl_module)
        self._write(self.results)
        self._log_hyperparameters_with_results(trainer, pl_module)

    @rank_zero_only
    def _write(self, results: dict[str, Any]) -> None:
        write_json_atomically(self.path, results)
        log.info("Results written to %s", self.path)

    def _log_hyperparameters_with_results(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hyperparameters next to the run's final figures, for TensorBoard's HParams tab."""
        metrics = {f"hp/{key}": self.results[key] for key in ("best_val_acc", "best_val_loss", "final_val_acc")
                   if self.results[key] is not None}
        hyperparameters = {**dict(trainer.datamodule.hparams if trainer.datamodule else {}), **dict(pl_module.hparams)}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hyperparameters, metrics)

    def summarise(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The figures of ``results.json``; best epoch is the first with the highest val accuracy.

        ``stopped_early``: an ``EarlyStopping`` callback ended the run at ``stopped_epoch`` (the last epoch run).
        """
        best = max(self.history, key=lambda h: h["val_acc"], default=None)
        checkpoint = trainer.checkpoint_callback
        best_path = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        stopper = trainer.early_stopping_callback
        stopped = stopper is not None and stopper.stopping_reason != EarlyStoppingReason.NOT_STOPPED
        return {
            **self.run_info,
            "classes": list(pl_module.hparams.class_names),
            "lr": (pl_module.hparams.get("optimizer") or {}).get("lr"),  # optimizer.lr; each group at it x its scale
            "epochs_run": trainer.current_epoch,
            "stopped_early": stopped,
            "stopped_epoch": stopper.stopped_epoch if stopped else None,
            "best_epoch": best["epoch"] if best else None,
            "best_val_acc": best["val_acc"] if best else None,
            "best_val_loss": min((h["val_loss"] for h in self.history), default=None),
            "final_val_acc": self.history[-1]["val_acc"] if self.history else None,
            "train_time_s": round(time.perf_counter() - self._fit_started, 3),
            "train_images_per_s": round(self.train_images / self.train_seconds, 2) if self.train_seconds else None,
            "params_trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "params_total": sum(p.numel() for p in pl_module.parameters()),
            "best_checkpoint": str(Path(best_path).resolve()) if best_path else None,
            "history": [{k: _finite(v) for k, v in h.items()} for h in self.history],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "train_seconds": self.train_seconds, "train_images": self.train_images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]
        self.train_seconds = state_dict["train_seconds"]
        self.train_images = state_dict["train_images"]


def _finite(value: float) -> float | None:
    return value if not isinstance(value, float) or math.isfinite(value) else None
