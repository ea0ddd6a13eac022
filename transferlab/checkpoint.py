"""A trained checkpoint ready for inference, and the key=value command lines of predict/evaluate/export.

Everything inference needs comes from the checkpoint itself: the architecture, the class names,
the weights it was trained from (whose preset gives resize, crop, mean and std) and the image
size. No Hydra config, no download, and no pickled code is ever run.
"""

import inspect
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from torchvision.transforms._presets import ImageClassification

from transferlab.backbones import preprocessing_weights
from transferlab.errors import ConfigError
from transferlab.module import TransferClassifier
from transferlab.transforms import eval_transform

REQUIRED_HPARAMS = ("backbone", "class_names")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """The raw content of a transferlab checkpoint, read with ``torch.load(weights_only=True)``.

    A missing, unreadable or foreign file, or one holding pickled code, is a ConfigError naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt={path} does not exist{' (it is a folder)' if path.is_dir() else ''}. Give the path of a "
            "checkpoint written by python -m transferlab.train, e.g. outputs/DATE/TIME/checkpoints/best.ckpt."
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"ckpt={path} was refused: it holds pickled objects other than tensors and plain values "
            f"({_unpickling_detail(error)}), or is not a PyTorch file at all. Loading it could run "
            "arbitrary code, so it was not loaded. Use a checkpoint written by transferlab.train, from a "
            "trusted source."
        ) from error
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        raise ConfigError(
            f"ckpt={path} could not be read as a PyTorch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Is it truncated, still being "
            "written, or of another format?"
        ) from error
    hparams = content.get("hyper_parameters") if isinstance(content, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in content or any(k not in hparams for k in REQUIRED_HPARAMS):
        raise ConfigError(
            f"ckpt={path} is a PyTorch file but not a transferlab checkpoint (it lacks state_dict or the "
            f"hyper-parameters {', '.join(REQUIRED_HPARAMS)}). Give checkpoints/best.ckpt or last.ckpt of a "
            "python -m transferlab.train run."
        )
    return content


def _unpickling_detail(error: Exception) -> str:
    """The informative line(s) of torch's long 'Weights only load failed' message."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines()]
    detail = [line for line in lines if line and not line.startswith(boilerplate)]
    return " ".join(detail)[:300] or type(error).__name__


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> TransferClassifier:
    """The checkpoint's ``TransferClassifier`` in eval mode, built without Hydra or a download.

    The network is built with random initialisation and then receives the checkpoint's tensors,
    so ``weights`` is never fetched; ``hparams.weights`` keeps the checkpoint's value because the
    preprocessing depends on it (see ``preprocessing``).
    """
    path = Path(path).expanduser()
    content = load_checkpoint_file(path)
    hparams = dict(content["hyper_parameters"])
    accepted = inspect.signature(TransferClassifier.__init__).parameters
    arguments = {key: value for key, value in hparams.items() if key in accepted}
    model = TransferClassifier(**{**arguments, "weights": None})
    model.hparams["weights"] = hparams.get("weights")
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        summary = str(error).split("\n\t", 1)[-1][:600]
        raise ConfigError(
            f"ckpt={path}: its tensors do not fit the model its own hyper-parameters describe "
            f"(backbone {hparams['backbone']}, {len(hparams['class_names'])} classes): {summary}. Was it written "
            "by another transferlab or torchvision version?"
        ) from error
    model.eval()
    model.requires_grad_(False)
    return model.to(map_location)


def preprocessing(model: TransferClassifier) -> ImageClassification:
    """The eval transform the model was validated with: its training weights' preset at its image size."""
    hparams = model.hparams
    return eval_transform(preprocessing_weights(hparams.backbone, hparams.get("weights")), hparams.get("image_size"))


def input_size(transform: ImageClassification) -> list[int]:
    """``[3, H, W]`` of the tensors ``transform`` produces."""
    crop = transform.crop_size[0]
    return [3, crop, crop]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device. Use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available here. Use device=cpu or device=auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name}: there are only {torch.cuda.device_count()} CUDA device(s). Use cuda:0.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} was asked for but Apple MPS is not available here. Use device=cpu or auto.")
    return device


def run_folder(checkpoint: str | Path) -> Path:
    """The training run a checkpoint belongs to: the parent of ``checkpoints/``, else the checkpoint's folder."""
    folder = Path(os.path.abspath(Path(checkpoint).expanduser())).parent  # a link's own folder, not its target's
    return folder.parent if folder.name == "checkpoints" else folder


# --- key=value command lines -------------------------------------------------------------------------------

Schema = TypeVar("Schema")


def option_names(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted names of every leaf option of a config, e.g. ``ckpt``, ``data.root``."""
    names = []
    for key in node:
        value = node._get_node(key)
        if isinstance(value, DictConfig):
            names += option_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def parse_cli(schema: type[Schema], argv: list[str], usage: str) -> DictConfig:
    """``key=value`` arguments merged over the dataclass ``schema``'s defaults, every mistake a ConfigError.

    Unknown keys list the valid ones; values of the wrong type and required options left out
    (``MISSING`` in the schema) name the option.
    """
    defaults = OmegaConf.structured(schema)
    valid = ", ".join(option_names(defaults))
    loose = [argument for argument in argv if "=" not in argument]
    if loose:
        raise ConfigError(f"Arguments are key=value pairs; not understood: {' '.join(loose)}. Options: {valid}. "
                          f"Usage: {usage}")
    try:
        cfg = OmegaConf.merge(defaults, OmegaConf.from_cli(list(argv)))
    except ConfigKeyError as error:
        raise ConfigError(f"Unknown option {error.full_key or error.key}. Valid options: {valid}.") from None
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f"Option {getattr(error, 'full_key', None) or '?'}: {message}. Usage: {usage}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"Missing required option(s): {', '.join(missing)} (give each as key=value). Usage: {usage}")
    return cfg


def run_cli(program: str, schema: type[Schema], run: Callable[[DictConfig], Any], usage: str,
            argv: list[str] | None = None) -> None:
    """Parse ``argv`` and call ``run``; bad input prints one paragraph to stderr and exits 2, no traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(argument in ("-h", "--help", "help") for argument in argv):
        print(f"usage: {usage}")
        return
    try:
        run(parse_cli(schema, argv, usage))
    except ConfigError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
