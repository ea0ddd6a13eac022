"""Pictures in TensorBoard: the augmented training inputs once, and at every new best epoch a
confusion matrix and a grid of validation images titled "predicted / true" (mistakes in red).

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas by ``add_figure``, never
registered with pyplot (no global state, no backend to switch), and drawn only at the start and at
new best epochs, so drawing never dominates an epoch.
"""

import math
import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from transferlab.backbones import preprocessing_weights
from transferlab.transforms import denormalize

MISTAKE_COLOUR = "red"
CORRECT_COLOUR = "black"


def to_pictures(images: torch.Tensor, undo_normalisation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Normalised float images (N, C, H, W) -> uint8 pictures on the CPU, small to keep and ready to draw."""
    pixels = undo_normalisation(images.detach().float()).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).cpu()


def is_images(inputs: torch.Tensor) -> bool:
    """True for a batch of images (N, C, H, W); False for cached features (N, D)."""
    return inputs.ndim == 4


def image_grid(pictures: torch.Tensor) -> torch.Tensor:
    """uint8 pictures (N, C, H, W) -> one roughly square (C, H', W') grid, for ``add_image``."""
    return torchvision.utils.make_grid(pictures, nrow=math.ceil(math.sqrt(len(pictures))), padding=2)


def confusion_counts(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted class. Stays on their device."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_figure(counts: torch.Tensor, class_names: Sequence[str], title: str = "") -> Figure:
    """The confusion matrix as a heat map with the count in every cell and the class names on the axes."""
    counts = counts.cpu()
    n = len(class_names)
    side = min(3 + 0.45 * n, 20)
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(counts.numpy(), cmap="Blues", vmin=0)  # no colour bar: the counts are in the cells
    axes.set_xticks(range(n), class_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    axes.set_yticks(range(n), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title)
    if n <= 20:  # beyond that the numbers hardly fit their cells, and drawing them takes seconds
        threshold = counts.max().item() / 2
        for true in range(n):
            for predicted in range(n):
                value = counts[true, predicted].item()
                axes.text(predicted, true, str(value), ha="center", va="center", fontsize=9,
                          color="white" if value > threshold else "black")
    return figure


def predictions_figure(pictures: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor,
                       class_names: Sequence[str], title: str = "") -> Figure:
    """uint8 pictures (N, C, H, W) in a grid, each titled "predicted / true"; mistakes in red with a red frame.

    One mosaic image on one axes: a subplot per picture would take most of the drawing time.
    """
    count, _, height, width = pictures.shape
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    pad, band = max(2, width // 16), max(6, height // 4)  # between pictures; above each, for its title
    mosaic = torch.full((3, rows * (height + band) + pad, columns * (width + pad) + pad), 255, dtype=torch.uint8)
    title_inches = 0.4 if title else 0.0
    picture_inches = 2.2 * columns * mosaic.shape[1] / mosaic.shape[2]
    figure = Figure(figsize=(2.2 * columns, picture_inches + title_inches))
    if title:
        figure.suptitle(title, y=1 - 0.1 / (picture_inches + title_inches), va="top")
    axes = figure.add_axes((0, 0, 1, picture_inches / (picture_inches + title_inches)))
    axes.set_axis_off()
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + band) + band, column * (width + pad) + pad
        mosaic[:, top:top + height, left:left + width] = pictures[index].expand(3, -1, -1)
    axes.imshow(mosaic.permute(1, 2, 0).numpy(), interpolation="nearest")
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + band) + band, column * (width + pad) + pad
        predicted, true = int(predictions[index]), int(labels[index])
        colour = CORRECT_COLOUR if predicted == true else MISTAKE_COLOUR
        axes.text(left + width / 2, top - band * 0.2, f"{class_names[predicted]} / {class_names[true]}",
                  color=colour, fontsize=9, ha="center", va="bottom", clip_on=False)
        if predicted != true:
            axes.add_patch(Rectangle((left - 1, top - 1), width + 1, height + 1, fill=False, edgecolor=colour,
                                     linewidth=2.5))
    return figure


class PictureSample:
    """Which validation pictures the predictions grid shows: a seeded, uniform sample over the whole epoch.

    Mistakes and correct predictions are sampled apart (reservoir sampling, ``size`` of each), so
    that mistakes fill at least half of the grid when there are that many, and the grid is not just
    the first class of a validation set sorted by class. Only the pictures kept are de-normalised
    and copied to the CPU.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self._random = random.Random(seed)  # its own generator: training randomness stays untouched
        self._seen = {True: 0, False: 0}  # by "is a mistake"
        self._kept: dict[bool, list[list]] = {True: [], False: []}  # [position, picture, prediction, label]
        self._position = 0

    def add(self, images: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor,
            make_pictures: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Offer one batch; ``make_pictures`` turns the images kept, in one call, into uint8 pictures."""
        fresh = []  # [position in the epoch, index in the batch -> picture, prediction, label]
        for index, (predicted, true) in enumerate(zip(predictions.tolist(), labels.tolist())):
            mistake = predicted != true
            slot = self._slot(mistake)
            if slot is not None:
                entry = [self._position + index, index, predicted, true]
                self._kept[mistake][slot:slot + 1] = [entry]  # replaces, or appends at the end
                fresh.append(entry)
        if fresh:
            for entry, picture in zip(fresh, make_pictures(images[[entry[1] for entry in fresh]])):
                entry[1] = picture
        self._position += len(predictions)

    def _slot(self, mistake: bool) -> int | None:
        """Where the next picture of its kind goes in the reservoir, or None to skip it."""
        self._seen[mistake] += 1
        kept = self._kept[mistake]
        if len(kept) < self.size:
            return len(kept)
        slot = self._random.randrange(self._seen[mistake])
        return slot if slot < self.size else None

    def chosen(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(pictures, predictions, labels) of at most ``size`` pictures in epoch order, or None when empty."""
        mistakes, correct = self._kept[True], self._kept[False]
        mistake_count = min(len(mistakes), max(self.size // 2, self.size - len(correct)))
        correct_count = min(len(correct), self.size - mistake_count)
        entries = sorted(self._random.sample(mistakes, mistake_count) + self._random.sample(correct, correct_count),
                         key=lambda entry: entry[0])
        if not entries:
            return None
        _, pictures, predictions, labels = zip(*entries)
        return torch.stack(pictures), torch.tensor(predictions), torch.tensor(labels)


class TensorBoardImages(Callback):
    """Logs ``train/inputs`` once, and ``val/confusion_matrix`` and ``val/predictions`` at each new best ``val/acc``.

    A new best is strictly higher than every earlier epoch (as ``ModelCheckpoint`` decides), so the
    figures describe the model in ``best.ckpt``; the best so far is kept in the checkpoint, so a
    resumed run goes on from it. Only acts when a ``TensorBoardLogger`` is attached, and while
    fitting. The pictures (``max_images`` of them, see ``PictureSample``) come from rank zero's
    share of the data; the confusion matrix is summed over all ranks. Batches of cached backbone
    features (``transferlab.features``) have no pictures: then only the confusion matrix is logged.
    """

    def __init__(self, max_images: int = 16, monitor: str = "val/acc") -> None:
        self.max_images = max_images
        self.monitor = monitor
        self.best: float | None = None
        self.inputs_logged = False
        self._undo: Callable[[torch.Tensor], torch.Tensor] | None = None  # set in setup: closures do not pickle
        self._counts: torch.Tensor | None = None
        self._sample = PictureSample(max_images)

    @property
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
        """The inverse of the normalisation the data module applies: the mean/std of the module's weights."""
        hparams = pl_module.hparams
        self._undo = denormalize(preprocessing_weights(hparams["backbone"], hparams.get("weights")))

    def _active(self, trainer: pl.Trainer) -> bool:
        return self._writer(trainer) is not None and trainer.state.fn == TrainerFn.FITTING

    # ---- training inputs, once

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.inputs_logged or not self._active(trainer):
            return
        self.inputs_logged = True
        if trainer.is_global_zero and self.max_images > 0 and is_images(batch[0]):
            pictures = to_pictures(batch[0][: self.max_images], self._undo)
            self._writer(trainer).add_image("train/inputs", image_grid(pictures), global_step=trainer.global_step)

    # ---- validation: accumulate cheaply, draw only at a new best

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not self._active(trainer) or not isinstance(outputs, torch.Tensor):
            return
        images, labels = batch[0], batch[1]
        counts = confusion_counts(outputs, labels, len(self._class_names(pl_module)))  # on the device
        self._counts = counts if self._counts is None else self._counts + counts
        if trainer.is_global_zero and is_images(images):
            self._sample.add(images, outputs.cpu(), labels.cpu(), partial(to_pictures, undo_normalisation=self._undo))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._active(trainer) or self._counts is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)) or not self._is_new_best(float(value)):
            self._reset()
            return
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum")  # every rank agrees on the best: synced metric
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
        self._counts = None
        self._sample = PictureSample(self.max_images)

    # ---- resume

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "inputs_logged": self.inputs_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.inputs_logged = state_dict["inputs_logged"]
