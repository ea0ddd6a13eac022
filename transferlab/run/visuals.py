"""Pictures in TensorBoard: the augmented training inputs once, and at every new best epoch a
confusion matrix and a grid of validation images titled "predicted / true" (mistakes in red).

A callback only: the figures themselves are drawn in ``transferlab.run.figures``. They are drawn
only at the start and at new best epochs, so drawing never dominates an epoch.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics.classification import MulticlassConfusionMatrix
from typing_extensions import override

from transferlab.data.transforms import Preprocessing
from transferlab.run.figures import PictureSample, confusion_figure, image_grid, predictions_figure, to_pictures


def is_images(inputs: torch.Tensor) -> bool:
    """True for a batch of images (N, C, H, W); False for cached features (N, D)."""
    return inputs.ndim == 4


class TensorBoardImages(Callback):
    """Logs ``train/inputs`` once, and ``val/confusion_matrix`` and ``val/predictions`` at each new best ``val/acc``.

    A new best is strictly higher than every earlier epoch (as ``ModelCheckpoint`` decides), so the
    figures describe the model in ``best.ckpt``; the best so far is kept in the checkpoint, so a
    resumed run goes on from it. Only acts when a ``TensorBoardLogger`` is attached, and while
    fitting. The pictures (``max_images`` of them, see ``PictureSample``) come from rank zero's
    share of the data; the confusion matrix is a torchmetrics metric, summed over all ranks. Batches
    of cached backbone features (``transferlab.data.features``) have no pictures: then only the
    confusion matrix is logged.

    Example::

        trainer = pl.Trainer(logger=TensorBoardLogger("runs"), callbacks=[TensorBoardImages(max_images=16)])
    """

    def __init__(self, max_images: int = 16, monitor: str = "val/acc") -> None:
        self.max_images = max_images
        self.monitor = monitor
        self.best: float | None = None
        self.inputs_logged = False
        self._undo: Callable[[torch.Tensor], torch.Tensor] | None = None  # set in setup: closures do not pickle
        self._confusion: MulticlassConfusionMatrix | None = None  # made at fit start, when logging to TensorBoard
        self._sample = PictureSample(max_images)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    # ---- what the callback needs from the trainer and the module

    @staticmethod
    def _writer(trainer: pl.Trainer) -> Any | None:
        """The SummaryWriter of the first TensorBoardLogger, or None when there is none."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @staticmethod
    def _class_names(pl_module: pl.LightningModule) -> list[str]:
        return list(pl_module.hparams["class_names"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The inverse of the normalisation the data module applies: the module's stored preprocessing."""
        self._undo = Preprocessing.from_dict(pl_module.hparams["preprocessing"]).denormalize()

    def _active(self, trainer: pl.Trainer) -> bool:
        return self._writer(trainer) is not None and trainer.state.fn == TrainerFn.FITTING

    # ---- training inputs, once

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.inputs_logged or not self._active(trainer):
            return
        self.inputs_logged = True
        if trainer.is_global_zero and self.max_images > 0 and is_images(batch[0]):
            pictures = to_pictures(batch[0][: self.max_images], self._undo)
            self._writer(trainer).add_image("train/inputs", image_grid(pictures), global_step=trainer.global_step)

    # ---- validation: accumulate cheaply, draw only at a new best

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The confusion matrix, on the module's device: known only now, the strategy moves the module after setup.

        ``validate_args=False``: predictions are an argmax over the classes and the module's ``val_acc``
        already checks the labels; checking again would cost a device sync every batch.
        """
        if self._active(trainer):
            classes = len(self._class_names(pl_module))
            self._confusion = MulticlassConfusionMatrix(classes, validate_args=False).to(pl_module.device)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (trainer.sanity_checking or self._confusion is None or not self._active(trainer)
                or not isinstance(outputs, torch.Tensor)):
            return
        images, labels = batch[0], batch[1]
        self._confusion.update(outputs, labels)
        if trainer.is_global_zero and is_images(images):
            self._sample.add(images, outputs.cpu(), labels.cpu(), partial(to_pictures, undo_normalisation=self._undo))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.sanity_checking or self._confusion is None or not self._active(trainer)
                or self._confusion.update_count == 0):
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and math.isfinite(float(value)) and self._is_new_best(float(value)):
            counts = self._confusion.compute()  # syncs over all ranks: each agrees on the best, val/acc is synced
            if trainer.is_global_zero:
                self._log_best_epoch(trainer, pl_module, counts, float(value))
        self._reset()

    def _is_new_best(self, value: float) -> bool:
        """Strictly better than every earlier epoch; remembers it."""
        if self.best is not None and value <= self.best:
            return False
        self.best = value
        return True

    def _log_best_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, counts: torch.Tensor,
                        value: float) -> None:
        writer, epoch, names = self._writer(trainer), trainer.current_epoch, self._class_names(pl_module)
        title = f"epoch {epoch}, {self.monitor} {value:.4f}"
        writer.add_figure("val/confusion_matrix", confusion_figure(counts, names, title), global_step=epoch)
        chosen = self._sample.chosen()
        if chosen is not None:
            figure = predictions_figure(*chosen, names, f"predicted / true ({title}), mistakes in red")
            writer.add_figure("val/predictions", figure, global_step=epoch)
        writer.flush()

    def _reset(self) -> None:
        """Forget the epoch: a sanity check's or an earlier epoch's batches never count."""
        if self._confusion is not None:
            self._confusion.reset()
        self._sample = PictureSample(self.max_images)

    # ---- resume

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "inputs_logged": self.inputs_logged}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.inputs_logged = state_dict["inputs_logged"]
