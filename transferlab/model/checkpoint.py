"""A trained checkpoint ready for inference: its model and the preprocessing it was validated with.

Everything inference needs comes from the checkpoint itself: the architecture, the class names
and the preprocessing (resize, crop, mean, std). No Hydra config, no download, and no pickled
code is ever run.
"""

import inspect
from pathlib import Path
from typing import Any

import torch

from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.model.backbones import DEFAULT_SOURCE, preprocessing_for
from transferlab.model.loading import load_safely
from transferlab.model.module import TransferClassifier

REQUIRED_HPARAMS = ("backbone", "class_names")
TRAINED_CHECKPOINT = ("Give checkpoints/best.ckpt or last.ckpt of a python -m transferlab.train run, from a "
                      "trusted source.")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """The raw content of a transferlab checkpoint, read with ``torch.load(weights_only=True)``.

    A missing, unreadable or foreign file, or one holding pickled code, is a ConfigError naming it.
    """
    content = load_safely(path, "ckpt", TRAINED_CHECKPOINT)
    hparams = content.get("hyper_parameters") if isinstance(content, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in content or any(k not in hparams for k in REQUIRED_HPARAMS):
        raise ConfigError(
            f"ckpt={path} is a PyTorch file but not a transferlab checkpoint (it lacks state_dict or the "
            f"hyper-parameters {', '.join(REQUIRED_HPARAMS)}). {TRAINED_CHECKPOINT}"
        )
    return content


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> TransferClassifier:
    """The checkpoint's ``TransferClassifier`` in eval mode, built without Hydra or a download.

    The network is built with random initialisation and then receives the checkpoint's tensors,
    so ``weights`` is never fetched; ``hparams.weights`` keeps the checkpoint's value.
    """
    path = Path(path).expanduser()
    content = load_checkpoint_file(path)
    hparams = dict(content["hyper_parameters"])
    hparams.setdefault("preprocessing", _derived_preprocessing(hparams).to_dict())
    accepted = inspect.signature(TransferClassifier.__init__).parameters
    arguments = {key: value for key, value in hparams.items() if key in accepted}
    model = TransferClassifier(**{**arguments, "weights": None})
    model.hparams["weights"] = hparams.get("weights")
    model.hparams_from_checkpoint = True  # its optimizer and scheduler targets are the checkpoint's: not trusted
    try:
        model.load_state_dict(content["state_dict"], strict=True)
    except RuntimeError as error:
        summary = str(error).split("\n\t", 1)[-1][:600]
        raise ConfigError(
            f"ckpt={path}: its tensors do not fit the model its own hyper-parameters describe "
            f"(backbone {hparams['backbone']}, {len(hparams['class_names'])} classes): {summary}. Was it written "
            "by another transferlab, torchvision or timm version?"
        ) from error
    model.eval()
    model.requires_grad_(False)
    return model.to(map_location)


def _derived_preprocessing(hparams: dict[str, Any]) -> Preprocessing:
    """For checkpoints written before the preprocessing was stored: the weights' preset at the image size."""
    source = hparams.get("source", DEFAULT_SOURCE)
    return preprocessing_for(hparams["backbone"], hparams.get("weights"), source).at_size(hparams.get("image_size"))


def preprocessing(model: TransferClassifier) -> Preprocessing:
    """The preprocessing the model was trained and validated with (stored in its hyper-parameters)."""
    return Preprocessing.from_dict(model.hparams["preprocessing"])
