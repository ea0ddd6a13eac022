"""Evaluation: ``python -m transferlab.evaluate ckpt=PATH data.root=DIR [split=auto] [output=DIR]``.

Accuracy, per-class precision / recall / F1 and the confusion matrix of a checkpoint on
``data.root/test/`` when present, else ``data.root/val/``, else the images the run held out of
``train/`` (its ``split.json``). Printed, and saved as JSON and PNG in ``evaluation/`` of the
checkpoint's run folder (or ``output=``). An image with more pixels than ``max_image_pixels`` (null:
PIL's decompression-bomb limit, as in training) stops the evaluation with a ConfigError naming it.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from transferlab.cli.args import resolve_device, run_cli
from transferlab.data.folders import ClassFolder, loader_workers, require_classes
from transferlab.data.images import PixelLimit
from transferlab.data.scan import count_kinds, find_problems, listing
from transferlab.errors import ConfigError
from transferlab.files import atomic_path, write_json_atomically
from transferlab.layout import SPLIT, run_folder
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.module import TransferClassifier

USAGE = ("python -m transferlab.evaluate ckpt=PATH data.root=DIR [split=auto|test|val|train] [output=DIR] "
         "[batch_size=32] [num_workers=null] [device=auto|cpu|cuda] [max_image_pixels=null]")
SPLITS = ("auto", "test", "val", "train")


@dataclass
class DataArgs:
    root: str = MISSING  # the folder with train/ and val/ (and optionally test/), as in training


@dataclass
class EvaluateArgs:
    ckpt: str = MISSING
    data: DataArgs = field(default_factory=DataArgs)
    split: str = "auto"  # auto: test/ if present, else val/, else the run's held-out split.json
    output: str | None = None  # folder for the JSON and PNG; null: evaluation/ in the checkpoint's run folder
    batch_size: int = 32
    num_workers: int | None = None  # null: the cores available, at most 8
    device: str = "auto"
    max_image_pixels: int | None = None  # larger images stop the evaluation; null: PIL's limit (89,478,485)


def evaluation_set(root: str | Path, split: str, class_names: list[str], transform: Any,
                   run_dir: Path | None = None, max_image_pixels: int | None = None) -> tuple[Dataset, str, str]:
    """The images to evaluate on, the split's name and a description of where they come from.

    Labels follow the checkpoint's ``class_names``; a folder whose classes differ is a ConfigError. Classes
    and images follow training's rules (``transferlab.data.folders``): ``.ipynb_checkpoints/`` is no class.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} does not exist. Point it at the folder holding val/ (or test/), "
                          "one sub-folder of images per class, as used in training.")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}.")
    split_file = run_dir / SPLIT if run_dir is not None else None
    loader = PixelLimit(max_image_pixels, "max_image_pixels").load_rgb
    if split == "auto":
        present = [name for name in ("test", "val") if (root / name).is_dir()]
        if present:
            split = present[0]
        elif split_file is not None and split_file.is_file() and (root / "train").is_dir():
            return _held_out(root / "train", split_file, class_names, transform, loader)
        else:
            raise ConfigError(
                f"data.root={root} has neither test/ nor val/, and the checkpoint's run folder has no split.json "
                "recording a held-out part of train/. Add a val/ or test/ folder (one sub-folder per class), or "
                "set split=train to evaluate on the training images."
            )
    folder = root / split
    if not folder.is_dir():
        raise ConfigError(f"split={split}: {folder} does not exist. Found: "
                          f"{', '.join(sorted(p.name for p in root.iterdir() if p.is_dir())) or 'no folders'}.")
    require_classes(folder, class_names, "the checkpoint", checkpoint_classes_fix(class_names))
    return ClassFolder(str(folder), transform=transform, loader=loader), split, str(folder)


def sample_paths(dataset: Dataset) -> list[Path]:
    """The image files of an evaluation set (a ``ClassFolder``, or a ``Subset`` of one)."""
    if isinstance(dataset, Subset):
        return [Path(dataset.dataset.samples[i][0]) for i in dataset.indices]
    return [Path(path) for path, _ in dataset.samples]


def checkpoint_classes_fix(class_names: list[str]) -> str:
    return f"Evaluate on a folder with one sub-folder per class the model was trained on: {', '.join(class_names)}."


def _held_out(train_dir: Path, split_file: Path, class_names: list[str], transform: Any,
              loader: Any) -> tuple[Dataset, str, str]:
    """The val images a run without val/ carved out of ``train/``, as its ``split.json`` lists them."""
    record = json.loads(split_file.read_text())
    require_classes(train_dir, class_names, "the checkpoint", checkpoint_classes_fix(class_names))
    dataset = ClassFolder(str(train_dir), transform=transform, loader=loader)
    index = {os.path.relpath(path, dataset.root): i for i, (path, _) in enumerate(dataset.samples)}
    missing = [name for name in record.get("val", []) if name not in index]
    if missing or not record.get("val"):
        raise ConfigError(
            f"{split_file} lists held-out images that are not in {train_dir} ({', '.join(missing[:5]) or 'none listed'}"
            f"{', ...' if len(missing) > 5 else ''}). Is data.root the folder that run was trained on?"
        )
    return Subset(dataset, [index[name] for name in record["val"]]), "heldout", f"{train_dir} (held out, {split_file})"


@torch.inference_mode()
def evaluate_model(model: TransferClassifier, dataset: Dataset, batch_size: int = 32, num_workers: int = 0,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Accuracy (micro), per-class and macro precision / recall / F1, support and the confusion matrix.

    ``dataset`` yields ``(image, label)`` with labels in the model's class order.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    class_names = list(model.hparams.class_names)
    n = len(class_names)
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes=n, average="micro"),
        "precision": MulticlassPrecision(num_classes=n, average=None),
        "recall": MulticlassRecall(num_classes=n, average=None),
        "f1": MulticlassF1Score(num_classes=n, average=None),
        "confusion_matrix": MulticlassConfusionMatrix(num_classes=n),
    }
    for metric in metrics.values():
        metric.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    predicted: list[int] = []
    for images, labels in loader:
        logits = model(images.to(device, non_blocking=True))
        labels = labels.to(device)
        for metric in metrics.values():
            metric.update(logits, labels)
        predicted += logits.argmax(dim=1).tolist()
    if not predicted:
        raise ConfigError("The evaluation set has no images.")
    values = {name: metric.compute().cpu() for name, metric in metrics.items()}
    confusion = values["confusion_matrix"].long()
    per_class = {
        name: {"precision": float(values["precision"][i]), "recall": float(values["recall"][i]),
               "f1": float(values["f1"][i]), "support": int(confusion[i].sum())}
        for i, name in enumerate(class_names)
    }
    return {
        "num_images": len(predicted),
        "classes": class_names,
        "accuracy": float(values["accuracy"]),
        "macro_precision": float(values["precision"].mean()),
        "macro_recall": float(values["recall"].mean()),
        "macro_f1": float(values["f1"].mean()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted class
        "misclassified": _misclassified(dataset, predicted, class_names),
    }


def _misclassified(dataset: Dataset, predicted: list[int], class_names: list[str]) -> list[dict[str, str]]:
    """``path``, ``true`` and ``predicted`` of every wrongly classified image of an ImageFolder (or Subset of one)."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return []
    wrong = []
    for index, guess in zip(indices, predicted, strict=True):
        path, label = samples[index]
        if label != guess:
            wrong.append({"path": path, "true": class_names[label], "predicted": class_names[guess]})
    return wrong


def format_report(report: dict[str, Any]) -> str:
    """The metrics as a plain-text table and the confusion matrix with class names."""
    names = report["classes"]
    width = max(10, *(len(name) for name in names))
    lines = [f"accuracy {report['accuracy']:.4f} on {report['num_images']} images", "",
             f"{'class':<{width}}  precision  recall     f1         support"]
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:<9.4f}  {row['recall']:<9.4f}  {row['f1']:<9.4f}  "
                     f"{row['support']}")
    lines.append(f"{'macro avg':<{width}}  {report['macro_precision']:<9.4f}  {report['macro_recall']:<9.4f}  "
                 f"{report['macro_f1']:<9.4f}  {report['num_images']}")
    matrix = report["confusion_matrix"]
    cell = max(5, *(len(name) for name in names), *(len(str(v)) for row in matrix for v in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * width + "  " + " ".join(f"{name:>{cell}}" for name in names)]
    lines += [f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row)
              for name, row in zip(names, matrix, strict=True)]
    return "\n".join(lines)


def save_confusion_png(report: dict[str, Any], path: Path, title: str = "") -> Path:
    """The confusion matrix as a PNG (``transferlab.run.figures.confusion_figure``), written atomically.

    Drawn to a temporary file beside ``path`` and renamed onto it, so a crash never leaves half a PNG.
    """
    from transferlab.run.figures import confusion_figure  # matplotlib only when a PNG is drawn, not to print usage

    title = title or f"accuracy {report['accuracy']:.4f} ({report['num_images']} images)"
    figure = confusion_figure(torch.tensor(report["confusion_matrix"]), report["classes"], title)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)  # format: the temporary's suffix is not .png
    return path


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the command-line configuration: print the report, save JSON and PNG; returns the report."""
    device = resolve_device(cfg.device)
    checkpoint = Path(cfg.ckpt).expanduser()
    model = load_classifier(checkpoint)
    dataset, split, source = evaluation_set(cfg.data.root, cfg.split, list(model.hparams.class_names),
                                            preprocessing(model).eval_transform(), run_folder(checkpoint),
                                            cfg.get("max_image_pixels"))
    problems, _ = find_problems(sample_paths(dataset), PixelLimit(cfg.get("max_image_pixels"), "max_image_pixels"))
    if problems:  # the scan training runs: a bad file is named here, not in a loader process's traceback
        raise ConfigError(f"Cannot evaluate on {source}: {len(problems)} bad image file(s) ({count_kinds(problems)})."
                          f"{listing(problems)}\nRemove or repair them, then evaluate again.")
    metrics = evaluate_model(model, dataset, cfg.batch_size, loader_workers(cfg.num_workers, "num_workers"), device)
    report = {"checkpoint": str(checkpoint.resolve()), "data_root": str(Path(cfg.data.root).expanduser()),
              "split": split, "source": source, **metrics}
    output = Path(cfg.output).expanduser() if cfg.output else run_folder(checkpoint) / "evaluation"
    stem = f"{checkpoint.stem}_{split}"
    json_path, png_path = output / f"{stem}.json", output / f"{stem}_confusion.png"
    write_json_atomically(json_path, report)
    save_confusion_png(report, png_path, f"{checkpoint.name} on {split}: accuracy {report['accuracy']:.4f}")
    print(f"Evaluated {checkpoint} on {source} ({device})\n\n{format_report(report)}\n\n"
          f"Saved {json_path} and {png_path}")
    return {**report, "json": str(json_path), "png": str(png_path)}


def main(argv: list[str] | None = None) -> None:
    run_cli("transferlab.evaluate", EvaluateArgs, evaluate, USAGE, argv)


if __name__ == "__main__":
    main()
