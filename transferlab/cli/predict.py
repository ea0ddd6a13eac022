"""Batch inference: ``python -m transferlab.predict ckpt=PATH input=DIR_OR_FILE [top_k=3] [output=FILE.csv]``.

Every image file under ``input`` (recursively; hidden files and folders skipped), or the one file
``input`` names, goes through the checkpoint's own preprocessing; the CSV has one row per file:
``path,label,score,top_k,error``. It goes to ``output=``, by default ``predictions.csv`` in the
checkpoint's run folder (``<run>/predictions.csv`` for ``<run>/checkpoints/best.ckpt``; beside a
checkpoint kept anywhere else), never into the working directory unasked.
A file that cannot be read or decoded, or has more pixels than ``max_image_pixels`` (null: PIL's
decompression-bomb limit, as in training), is a row with its ``error`` filled in, not a crash.
"""

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import MISSING, DictConfig
from torch.utils.data import DataLoader, Dataset

from transferlab.cli.args import resolve_device, run_cli
from transferlab.data.folders import IMG_EXTENSIONS, image_files, loader_workers
from transferlab.data.images import PixelLimit
from transferlab.errors import ConfigError
from transferlab.files import atomic_path
from transferlab.layout import PREDICTIONS, run_folder
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.module import TransferClassifier
from transferlab.model.prediction import Prediction, failure, rank

USAGE = ("python -m transferlab.predict ckpt=PATH input=DIR_OR_FILE [top_k=3] [output=FILE.csv] "
         "[batch_size=32] [num_workers=null] [device=auto|cpu|cuda] [max_image_pixels=null]")
CSV_COLUMNS = ("path", "label", "score", "top_k", "error")


@dataclass
class PredictArgs:
    ckpt: str = MISSING  # a transferlab checkpoint (checkpoints/best.ckpt of a run)
    input: str = MISSING  # an image file, or a folder searched recursively for image files
    top_k: int = 3  # classes listed per image in the top_k column (at most the number of classes)
    output: str | None = None  # null: predictions.csv in the checkpoint's run folder (see default_output)
    batch_size: int = 32
    num_workers: int | None = None  # null: the cores available, at most 8
    device: str = "auto"
    max_image_pixels: int | None = None  # larger images are error rows; null: PIL's limit (89,478,485)


def list_images(source: str | Path) -> list[Path]:
    """The one file ``source`` names, or every image under the folder (``transferlab.data.folders``'s rules)."""
    source = Path(source).expanduser()
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise ConfigError(f"input={source} does not exist. Give an image file or a folder of images.")
    files = image_files(source)
    if not files:
        raise ConfigError(f"input={source} holds no image files ({', '.join(IMG_EXTENSIONS)}), in any sub-folder.")
    return files


class ImageFiles(Dataset):
    """``(tensor, error)`` per file: a file that cannot be decoded gives zeros and the reason, never an exception."""

    def __init__(self, files: Sequence[Path], transform: Callable, shape: Sequence[int],
                 limit: PixelLimit | None = None) -> None:
        self.files = list(files)
        self.transform = transform
        self.shape = tuple(shape)
        self.limit = limit or PixelLimit(setting="max_image_pixels")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self.transform(self.limit.load_rgb(self.files[index])), ""
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            return torch.zeros(self.shape), failure(error)


@torch.inference_mode()
def predict_files(model: TransferClassifier, files: Sequence[Path], top_k: int = 3, batch_size: int = 32,
                  num_workers: int = 0, device: torch.device | str = "cpu",
                  max_image_pixels: int | None = None) -> list[Prediction]:
    """Predictions for ``files`` in their order, with the model's own preprocessing and class names."""
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1.")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1.")
    device = torch.device(device)
    model = model.to(device).eval()
    class_names = list(model.hparams.class_names)
    inputs = preprocessing(model)
    limit = PixelLimit(max_image_pixels, "max_image_pixels")
    loader = DataLoader(ImageFiles(files, inputs.eval_transform(), inputs.input_shape, limit), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    predictions: list[Prediction] = []
    for images, errors in loader:
        batch = [Prediction(path=str(path), error=error)
                 for path, error in zip(files[len(predictions):len(predictions) + len(errors)], errors, strict=True)]
        readable = [index for index, error in enumerate(errors) if not error]
        if readable:
            logits = model(images[readable].to(device, non_blocking=True))
            for index, ranked in zip(readable, rank(logits, class_names, top_k), strict=True):
                batch[index] = replace(ranked, path=batch[index].path)
        predictions += batch
    return predictions


def write_csv(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """Write the predictions as ``path,label,score,top_k,error`` (top_k like ``bees:0.9100;ants:0.0900``)."""
    path = Path(path).expanduser()
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(prediction.csv_row() for prediction in predictions)
    return path


def default_output(checkpoint: str | Path) -> Path:
    """``<run>/predictions.csv`` for ``<run>/checkpoints/X.ckpt``; for a checkpoint kept elsewhere, beside it."""
    return run_folder(checkpoint) / PREDICTIONS


def predict(cfg: DictConfig) -> Path:
    """Run the command-line configuration; returns the CSV written."""
    device = resolve_device(cfg.device)
    files = list_images(cfg.input)
    model = load_classifier(cfg.ckpt)
    workers = loader_workers(cfg.num_workers, "num_workers")
    predictions = predict_files(model, files, cfg.top_k, cfg.batch_size, workers, device, cfg.get("max_image_pixels"))
    output = write_csv(predictions, cfg.get("output") or default_output(cfg.ckpt))
    failed = sum(1 for prediction in predictions if prediction.error)
    print(f"Predicted {len(predictions) - failed} image(s) on {device}"
          f"{f', {failed} could not be read (see the error column)' if failed else ''}: {output}")
    return output


def main(argv: list[str] | None = None) -> None:
    run_cli("transferlab.predict", PredictArgs, predict, USAGE, argv)


if __name__ == "__main__":
    main()
