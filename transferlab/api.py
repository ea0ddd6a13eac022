"""transferlab from Python: ``fit`` a classifier, ``load`` a checkpoint, ``predict`` images.

    import transferlab
    result = transferlab.fit("~/photos", backbone="resnet50", mode="finetune", overrides=["trainer.max_epochs=5"])
    model = transferlab.load(result.best_checkpoint)
    model.predict(["a.jpg", "b.png"], top_k=3)

``fit`` composes the same ``conf/`` as ``transferlab train`` (Hydra's compose API), with the same
overrides, and writes the same run folder; bad input raises the same one-paragraph ``ConfigError``.
"""

import copy
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from transferlab.cli.args import resolve_device
from transferlab.cli.overrides import CONFIG_DIR, check_group_choices, group_choices
from transferlab.cli.predict import list_images, predict_files
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.model.backbones import source_of
from transferlab.model.checkpoint import load_classifier
from transferlab.model.module import TransferClassifier
from transferlab.model.prediction import Prediction
from transferlab.run import folder as run_folder


@dataclass(frozen=True)
class FitResult:
    """A finished run: its folder and the contents of its ``results.json``."""

    run_dir: Path
    results: dict[str, Any]

    @property
    def best_val_acc(self) -> float | None:
        return self.results.get("best_val_acc")

    @property
    def best_epoch(self) -> int | None:
        return self.results.get("best_epoch")

    @property
    def best_checkpoint(self) -> Path | None:
        """``checkpoints/best.ckpt``: the epoch with the highest val accuracy."""
        path = self.results.get("best_checkpoint")
        return Path(path) if path else None


def training_overrides(data: str | Path | None, backbone: str, mode: str, overrides: Sequence[str]) -> list[str]:
    """The command-line overrides ``fit``'s arguments stand for, then ``overrides`` (which win).

    ``backbone`` is a preset of ``conf/backbone/``, any torchvision model name (with the default preset) or any timm
    model name (``backbone=timm``).
    """
    if backbone in group_choices(CONFIG_DIR)["backbone"]:
        chosen = [f"backbone={backbone}"]
    elif source_of(backbone) == "timm":
        chosen = ["backbone=timm", f"backbone.name={backbone}"]
    else:
        chosen = [f"backbone.name={backbone}"]
    chosen.append(f"mode={mode}")
    if data is not None:
        chosen = ["data=image_folder", f"data.root={Path(data).expanduser().resolve()}", *chosen]
    return [*chosen, *overrides]


def compose_training(overrides: Sequence[str], run_dir: str | Path | None = None) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, writing into ``run_dir`` (default: Hydra's ``hydra.run.dir``).

    The result keeps Hydra's own node under ``hydra``, as a command-line run sees it.
    """
    overrides = list(overrides) + ([f"hydra.run.dir={Path(run_dir).expanduser().resolve()}"] if run_dir else [])
    check_group_choices(overrides, CONFIG_DIR)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(f"The overrides {overrides} do not compose: {first_line}. Each is key=value or "
                          "group=choice, as on the transferlab train command line.") from None
    output_dir = Path(str(cfg.hydra.run.dir)).expanduser().resolve()
    OmegaConf.update(cfg, "paths.output_dir", str(output_dir))  # what ${hydra:runtime.output_dir} is on the CLI
    return cfg


def fit(data: str | Path | None = None, backbone: str = "resnet18", mode: str = "finetune",
        overrides: Sequence[str] = (), run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train one classifier on ``data`` (a folder with ``train/`` and optionally ``val/``; None: the configured
    data set) and return its run folder and results.

    ``overrides`` are ``transferlab train``'s (``["optimizer=adam", "trainer.max_epochs=5"]``); ``run_dir``
    defaults to ``outputs/DATE/TIME`` under the current folder; ``callbacks`` are added to the configured ones.
    """
    cfg = compose_training(training_overrides(data, backbone, mode, overrides), run_dir)
    output_dir = Path(cfg.paths.output_dir)
    log_format = cfg.hydra.job_logging.formatters.simple.format  # as Hydra's train.log of a command-line run
    with (run_folder.claimed(output_dir, resume=bool(cfg.get("resume"))),
          _logging_to(output_dir / "train.log", log_format)):
        _save_hydra_files(cfg, output_dir)
        results = train(_without_hydra(cfg), list(callbacks))
    return FitResult(output_dir, results)


def _without_hydra(cfg: DictConfig) -> DictConfig:
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _save_hydra_files(cfg: DictConfig, output_dir: Path) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as a command-line run leaves them (the sweep
    report and ``resume`` read them)."""
    folder = output_dir / cfg.hydra.output_subdir
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(_without_hydra(cfg), folder / "config.yaml", resolve=False)
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), folder / "hydra.yaml", resolve=False)
    OmegaConf.save(OmegaConf.create(list(cfg.hydra.overrides.task)), folder / "overrides.yaml")


@contextmanager
def _logging_to(path: Path, log_format: str) -> Iterator[None]:
    """The run's log into ``path`` too, as Hydra's ``train.log``, while the run lasts."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(log_format))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(min(previous_level, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


class Classifier:
    """A trained checkpoint ready for inference: ``predict`` applies its own preprocessing and class names."""

    def __init__(self, model: TransferClassifier, device: torch.device) -> None:
        self.model = model
        self.device = device

    @property
    def class_names(self) -> list[str]:
        return list(self.model.hparams.class_names)

    def predict(self, images: str | Path | Sequence[str | Path], top_k: int = 3,
                batch_size: int = 32) -> list[Prediction]:
        """One ``Prediction`` (label, score, top_k, or the error that made a file unreadable) per image file, in
        order; a folder stands for every image under it."""
        sources = [images] if isinstance(images, str | Path) else list(images)
        files = [path for source in sources for path in list_images(source)]
        return predict_files(self.model, files, top_k=top_k, batch_size=batch_size, device=self.device)

    def __repr__(self) -> str:
        return f"Classifier({self.model.hparams.backbone}, classes={self.class_names}, device={self.device})"


def load(checkpoint: str | Path, device: str = "auto") -> Classifier:
    """A checkpoint (``best.ckpt`` or ``last.ckpt`` of a run) on ``device`` (auto: CUDA, then MPS, then CPU)."""
    target = resolve_device(device)
    return Classifier(load_classifier(checkpoint, map_location=target), target)
