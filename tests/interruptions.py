"""Callbacks that interrupt a run on cue, for the resume tests (loaded by the CLI via +callbacks.X)."""

import os
import signal as signal_module

import lightning.pytorch as pl
import torch


class KillAtEpoch(pl.Callback):
    """SIGKILL the process when ``epoch`` starts: the previous epoch's checkpoint is on disk, nothing else."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal_module.SIGKILL)


class SignalAtBatch(pl.Callback):
    """Send ``signal`` (SIGTERM: a cluster pre-empting the job; SIGINT: Ctrl-C) to the process in ``epoch``."""

    def __init__(self, epoch: int, batch: int, signal: str = "SIGTERM") -> None:
        self.epoch, self.batch, self.signal = epoch, batch, getattr(signal_module, signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signal)


class PoisonBufferBeforeValidation(pl.Callback):
    """Make a BatchNorm running variance infinite before ``epoch``'s validation: the loss stays finite."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            pl_module.backbone.bn1.running_var.fill_(float("inf"))


class PoisonAtBatch(pl.Callback):
    """Make the head's weights NaN before ``batch`` of ``epoch``, so the loss becomes NaN there."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                pl_module.head[-1].weight.fill_(float("nan"))


class ZeroLearningRateFrom(pl.Callback):
    """Train at learning rate 0 from ``epoch`` on (every group, every step): the weights stop changing, so in a
    run whose frozen backbone has no BatchNorm in training mode, val/loss stays exactly where it was."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch >= self.epoch:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = 0.0
