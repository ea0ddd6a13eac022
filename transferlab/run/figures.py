"""Pictures of a classifier's results: the confusion matrix, and a grid of predictions with the sample it shows.

One home for both, shared by TensorBoard (``transferlab.run.visuals``) and the evaluation PNG
(``transferlab.cli.evaluate``). Figures are drawn with matplotlib's object API on their own Agg
canvas, never registered with pyplot: no global state, no backend to switch, nothing to close.
"""

import math
import random
from collections.abc import Callable, Sequence

import torch
import torchvision
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

MISTAKE_COLOUR = "red"
CORRECT_COLOUR = "black"
CELL_INCHES = 0.45  # a confusion-matrix cell per class: room for a 4-digit count at 9 pt (about 0.3 inch wide)
# Counts are written in the cells up to this many classes. Up to here the figure grows a cell per
# class (3 + 0.45 * 30 = 16.5 inches: 1650 px in TensorBoard, about 2000 px in the 120 dpi PNG);
# past it the figure stops growing, so cells get too small for their numbers. Drawing is the other
# limit: the 900 texts of 30 classes took about 7 s on a busy 2-core machine (20 classes: 2-6 s),
# paid by TensorBoard at every new best epoch.
MAX_ANNOTATED_CLASSES = 30
COUNT_POINTS = 9  # font size of counts and class names while cells keep their full size


def agg_figure(**options) -> Figure:
    """A ``Figure`` drawn on its own Agg canvas (``savefig``, ``canvas.draw``), unknown to pyplot."""
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def to_pictures(images: torch.Tensor, undo_normalisation: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Normalised float images (N, C, H, W) -> uint8 pictures on the CPU, small to keep and ready to draw."""
    pixels = undo_normalisation(images.detach().float()).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).cpu()


def image_grid(pictures: torch.Tensor) -> torch.Tensor:
    """uint8 pictures (N, C, H, W) -> one roughly square (C, H', W') grid, for ``add_image``."""
    return torchvision.utils.make_grid(pictures, nrow=math.ceil(math.sqrt(len(pictures))), padding=2)


def confusion_figure(counts: torch.Tensor, class_names: Sequence[str], title: str = "") -> Figure:
    """The confusion matrix (rows: true class, columns: predicted class) as a heat map, class names on the axes.

    Up to ``MAX_ANNOTATED_CLASSES`` the count is written in every cell; beyond, a colour bar gives the
    scale instead and the class names shrink with the cells.
    """
    counts = torch.as_tensor(counts).cpu()
    n = len(class_names)
    annotated = n <= MAX_ANNOTATED_CLASSES
    side = 3 + CELL_INCHES * min(n, MAX_ANNOTATED_CLASSES)
    figure = agg_figure(figsize=(side if annotated else side + 1, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(counts.numpy(), cmap="Blues", vmin=0)
    label_points = COUNT_POINTS if annotated else max(3.0, COUNT_POINTS * MAX_ANNOTATED_CLASSES / n)
    tilted = {"rotation": 45, "ha": "right", "rotation_mode": "anchor"} if n > 3 else {}
    axes.set_xticks(range(n), class_names, fontsize=label_points, **tilted)
    axes.set_yticks(range(n), class_names, fontsize=label_points)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if title:
        axes.set_title(title)
    if not annotated:
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        return figure
    threshold = counts.max().item() / 2
    for true, row in enumerate(counts.tolist()):
        for predicted, value in enumerate(row):
            axes.text(predicted, true, str(value), ha="center", va="center", fontsize=COUNT_POINTS,
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
    figure = agg_figure(figsize=(2.2 * columns, picture_inches + title_inches))
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
        for index, (predicted, true) in enumerate(zip(predictions.tolist(), labels.tolist(), strict=True)):
            mistake = predicted != true
            slot = self._slot(mistake)
            if slot is not None:
                entry = [self._position + index, index, predicted, true]
                self._kept[mistake][slot:slot + 1] = [entry]  # replaces, or appends at the end
                fresh.append(entry)
        if fresh:
            for entry, picture in zip(fresh, make_pictures(images[[entry[1] for entry in fresh]]), strict=True):
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
        _, pictures, predictions, labels = zip(*entries, strict=True)
        return torch.stack(pictures), torch.tensor(predictions), torch.tensor(labels)
