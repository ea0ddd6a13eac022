"""TensorBoard pictures: training inputs once, confusion matrix and predictions at each new best epoch."""

import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.colors import to_rgba
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.models import ResNet18_Weights
from torchvision.transforms import Normalize
from torchvision.transforms._presets import ImageClassification

from conftest import CONFIG_DIR, FAST
from transferlab.cli.train import train
from transferlab.data.transforms import Preprocessing
from transferlab.run import visuals
from transferlab.run.figures import (
    CORRECT_COLOUR,
    MAX_ANNOTATED_CLASSES,
    MISTAKE_COLOUR,
    PictureSample,
    confusion_figure,
    predictions_figure,
    to_pictures,
)
from transferlab.run.visuals import TensorBoardImages

NAMES = ["ant", "bee", "wasp"]


class ValidationPredictions(Callback):
    """The (predictions, labels) of every validation epoch, as the module returns them; sanity checks apart."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.epochs.setdefault(trainer.current_epoch, []).append((outputs.cpu(), batch[1].cpu()))

    def counts(self, epoch: int, num_classes: int) -> torch.Tensor:
        """Rows: true class, columns: predicted class."""
        predictions, labels = (torch.cat(part) for part in zip(*self.epochs[epoch], strict=True))
        return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, -1)


@pytest.fixture(scope="module")
def visual_run(tmp_path_factory, image_folder):
    """One 3-epoch run with the default callbacks: its event files, results.json, the validation
    predictions of each epoch and the confusion-matrix figures the callback drew, in order."""
    run_dir = tmp_path_factory.mktemp("visual_run")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"data.root={image_folder}", f"paths.output_dir={run_dir}", *FAST, "trainer.max_epochs=3",
            "optimizer.lr=0.0003"])  # slow: improving epochs with mistakes, rather than 1.0 from epoch 0 on
    recorder, figures = ValidationPredictions(), []

    def drawn(*args, **kwargs):
        figures.append(confusion_figure(*args, **kwargs))
        return figures[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(visuals, "confusion_figure", drawn)
        train(cfg, [recorder])
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return SimpleNamespace(events=events, results=json.loads((run_dir / "results.json").read_text()),
                           predictions=recorder, confusion_figures=figures)


def improving_epochs(history: list[dict]) -> list[int]:
    """Epochs whose val_acc is strictly higher than every earlier one."""
    best, epochs = float("-inf"), []
    for entry in history:
        if entry["val_acc"] > best:
            best = entry["val_acc"]
            epochs.append(entry["epoch"])
    return epochs


def test_event_files_hold_scalars_images_and_hyperparameters(visual_run):
    events = visual_run.events
    assert {"train/inputs", "val/confusion_matrix", "val/predictions"} <= set(events.Tags()["images"])
    assert {"train/loss", "val/acc"} <= set(events.Tags()["scalars"])
    assert events.PluginTagToContent("hparams")


def test_inputs_once_and_figures_at_each_new_best_epoch_only(visual_run):
    events, results = visual_run.events, visual_run.results
    inputs = events.Images("train/inputs")
    assert [image.step for image in inputs] == [0]
    # the first batch's 12 pictures (max_images is 16) of 32 px in a 4 x 3 grid with 2 px padding
    assert (inputs[0].width, inputs[0].height) == (4 * 34 + 2, 3 * 34 + 2)
    expected = improving_epochs(results["history"])
    assert [image.step for image in events.Images("val/confusion_matrix")] == expected
    assert [image.step for image in events.Images("val/predictions")] == expected
    assert expected[-1] == results["best_epoch"]  # the last figures show the model in best.ckpt


def test_tensorboard_confusion_matrix_counts_that_epochs_validation_predictions(visual_run):
    events, recorder = visual_run.events, visual_run.predictions
    steps = [image.step for image in events.Images("val/confusion_matrix")]
    assert len(visual_run.confusion_figures) == len(steps) >= 1
    for epoch, figure in zip(steps, visual_run.confusion_figures, strict=True):
        expected = recorder.counts(epoch, num_classes=3)  # blue, green, red
        assert expected.sum() == 36  # the 36 val images once: no sanity-check batch, no earlier epoch
        axes = figure.axes[0]
        assert torch.equal(torch.as_tensor(axes.images[0].get_array()), expected), epoch
        assert [int(text.get_text()) for text in axes.texts] == expected.flatten().tolist()
        assert f"epoch {epoch}," in axes.get_title()


def test_confusion_matrix_counts_one_epoch_and_no_sanity_check(tmp_path, monkeypatch):
    """The callback's hooks driven as a fit drives them: a sanity check, a best epoch of images, a worse
    epoch, a best epoch of cached features (N, D); each figure counts its own epoch's batches only."""
    trainer = SimpleNamespace(loggers=[TensorBoardLogger(tmp_path)], state=SimpleNamespace(fn=TrainerFn.FITTING),
                              sanity_checking=True, is_global_zero=True, current_epoch=0, global_step=0,
                              callback_metrics={})
    confusion, pictures = {}, []  # by epoch: the counts drawn; the (pictures, predictions, labels) drawn

    def confusion_drawn(counts, names, title):
        confusion[trainer.current_epoch] = counts.cpu().tolist()
        return confusion_figure(counts, names, title)

    def predictions_drawn(*chosen_names_title):
        pictures.append(chosen_names_title[:3])
        return predictions_figure(*chosen_names_title)

    monkeypatch.setattr(visuals, "confusion_figure", confusion_drawn)
    monkeypatch.setattr(visuals, "predictions_figure", predictions_drawn)
    module = SimpleNamespace(hparams={"class_names": NAMES}, device=torch.device("cpu"))
    callback = TensorBoardImages(max_images=4)
    callback._undo = lambda images: images  # what setup derives from the module's preprocessing
    callback.on_fit_start(trainer, module)
    assert callback._confusion.confmat.device == module.device
    labels = torch.tensor([0, 1, 2, 2])
    epochs = [  # (val/acc, inputs, predictions): the sanity check first
        (None, torch.rand(4, 3, 4, 4), torch.tensor([2, 2, 2, 2])),
        (0.5, torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])),
        (0.4, torch.rand(4, 3, 4, 4), torch.tensor([1, 1, 1, 1])),
        (0.9, torch.rand(4, 8), torch.tensor([0, 0, 2, 2])),
    ]
    for epoch, (value, inputs, predictions) in enumerate(epochs, start=-1):
        trainer.sanity_checking, trainer.current_epoch = epoch < 0, max(epoch, 0)
        trainer.callback_metrics = {} if value is None else {"val/acc": torch.tensor(value)}
        callback.on_validation_epoch_start(trainer, module)
        for half in (slice(0, 2), slice(2, 4)):  # two batches an epoch
            callback.on_validation_batch_end(trainer, module, predictions[half], (inputs[half], labels[half]), 0)
        callback.on_validation_epoch_end(trainer, module)
    assert confusion == {0: [[1, 0, 0], [0, 1, 0], [1, 0, 1]], 2: [[1, 0, 0], [1, 0, 0], [0, 0, 2]]}
    assert len(pictures) == 1  # epoch 2's cached features have no pictures
    assert pictures[0][1].tolist() == [0, 1, 2, 0] and pictures[0][2].tolist() == labels.tolist()
    events = EventAccumulator(trainer.loggers[0].log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [image.step for image in events.Images("val/confusion_matrix")] == [0, 2]
    assert callback.best == pytest.approx(0.9)


def test_without_tensorboard_nothing_is_drawn(make_config):
    callback = TensorBoardImages()
    train(make_config("~logger", "~callbacks.lr_monitor", "~callbacks.tensorboard_images",
                                   "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                                   "+trainer.limit_val_batches=1"), [callback])
    assert not callback.inputs_logged and callback.best is None


@pytest.mark.parametrize("weights", [
    ResNet18_Weights.DEFAULT,
    SimpleNamespace(transforms=partial(ImageClassification, crop_size=8, resize_size=8,
                                       mean=(0.5, 0.25, 0.1), std=(0.2, 0.4, 0.8))),
])
def test_denormalize_inverts_the_weights_normalisation(weights):
    preset = weights.transforms()
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    normalised = Normalize(preset.mean, preset.std)(images)
    undo = Preprocessing.from_preset(preset).denormalize()
    assert torch.allclose(undo(normalised), images, atol=1e-5, rtol=0)
    assert torch.allclose(undo(normalised[0]), images[0], atol=1e-5, rtol=0)  # one image too


def test_pictures_are_small_uint8_and_clamped():
    pictures = to_pictures(torch.tensor([-1.0, 0.5, 2.0]).view(1, 3, 1, 1), lambda images: images)
    assert pictures.dtype == torch.uint8 and pictures.flatten().tolist() == [0, 128, 255]


def test_mistakes_are_marked_in_red():
    pictures = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    figure = predictions_figure(pictures, torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2]), NAMES)
    titles = figure.axes[0].texts
    assert [title.get_text() for title in titles] == ["ant / ant", "bee / wasp", "wasp / wasp"]
    assert [title.get_color() for title in titles] == [CORRECT_COLOUR, MISTAKE_COLOUR, CORRECT_COLOUR]
    frames = figure.axes[0].patches  # and a red frame around the one mistake
    assert len(frames) == 1 and frames[0].get_edgecolor() == to_rgba(MISTAKE_COLOUR)


def sample_of(labels: list[int], predictions: list[int], size: int, batch_size: int = 8):
    """Offer an epoch to a PictureSample in batches; each 1-pixel image holds its position in the epoch."""
    sample = PictureSample(size)
    for start in range(0, len(labels), batch_size):
        end = min(start + batch_size, len(labels))
        images = torch.arange(start, end, dtype=torch.float32).view(-1, 1, 1, 1)
        sample.add(images, torch.tensor(predictions[start:end]), torch.tensor(labels[start:end]),
                   lambda kept: kept.to(torch.uint8))
    return sample.chosen()


def test_picture_sample_spreads_over_the_epoch_and_keeps_mistakes():
    labels = [index // 20 for index in range(60)]  # sorted by class, as an ImageFolder is
    predictions = [2 if index in (5, 33) else label for index, label in enumerate(labels)]
    pictures, chosen_predictions, chosen_labels = sample_of(labels, predictions, size=8)
    positions = pictures.flatten().tolist()
    assert len(positions) == 8 and positions == sorted(positions)  # in epoch order
    assert {5, 33} <= set(positions)  # every mistake, as there are fewer than half the grid
    assert len({labels[position] for position in positions}) == 3  # not just the first class
    assert chosen_predictions.tolist() == [predictions[p] for p in positions]
    assert chosen_labels.tolist() == [labels[p] for p in positions]
    assert torch.equal(sample_of(labels, predictions, size=8)[0], pictures)  # seeded: the same every time
    assert torch.equal(sample_of(labels, predictions, size=8, batch_size=60)[0], pictures)  # whatever the batches


def test_picture_sample_gives_mistakes_half_the_grid_or_more():
    labels = [0] * 40
    predictions = [1] * 30 + [0] * 10
    _, chosen_predictions, _ = sample_of(labels, predictions, size=8)
    assert chosen_predictions.tolist().count(1) == 4  # half mistakes, half correct
    _, chosen_predictions, _ = sample_of(labels[:32], predictions[:32], size=8)  # only 2 correct ones
    assert chosen_predictions.tolist().count(1) == 6 and len(chosen_predictions) == 8
    assert sample_of([], [], size=8) is None


def test_confusion_figure_writes_counts_true_rows_predicted_columns():
    counts = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1]])
    axes = confusion_figure(counts, NAMES, "a title").axes[0]
    assert [text.get_text() for text in axes.texts] == ["1", "0", "0", "0", "1", "0", "1", "1", "1"]
    assert [label.get_text() for label in axes.get_xticklabels()] == NAMES
    assert [label.get_text() for label in axes.get_yticklabels()] == NAMES
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == ("predicted class", "true class", "a title")


def test_confusion_figure_beyond_the_limit_has_a_colour_bar_instead_of_counts():
    names = [f"class {index}" for index in range(MAX_ANNOTATED_CLASSES + 1)]
    figure = confusion_figure(torch.eye(len(names), dtype=torch.long), names)
    assert not figure.axes[0].texts and len(figure.axes) == 2  # the heat map and its colour bar
    at_limit = confusion_figure(torch.eye(MAX_ANNOTATED_CLASSES, dtype=torch.long), names[:-1])
    assert len(at_limit.axes[0].texts) == MAX_ANNOTATED_CLASSES ** 2 and len(at_limit.axes) == 1
    assert at_limit.get_size_inches()[1] == figure.get_size_inches()[1]  # the figure stops growing at the limit


def test_best_so_far_survives_a_resume():
    callback = TensorBoardImages()
    assert callback._is_new_best(0.5) and not callback._is_new_best(0.5)  # strictly better only
    callback.inputs_logged = True
    resumed = TensorBoardImages()
    resumed.load_state_dict(callback.state_dict())
    assert resumed.inputs_logged and not resumed._is_new_best(0.5) and resumed._is_new_best(0.6)
