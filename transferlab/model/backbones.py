"""Torchvision backbones: build by name, load weights (named, local file or checkpoint), cut off the classifier."""

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.model.loading import load_safely

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
CNN_MIN_SIZE = 32  # five stride-2 reductions (ResNet, VGG, MobileNet, ...) take 32 px down to 1x1


@dataclass
class Backbone:
    """A feature extractor and what the head needs to know about it."""

    network: nn.Module  # the torchvision model with its classifier replaced by nn.Identity
    num_features: int  # width of the features it returns
    head_state: dict[str, torch.Tensor] | None = None  # a transferlab checkpoint's head, when reusable


def classification_models() -> list[str]:
    """Names of every torchvision classification model."""
    return list_models(module=torchvision.models)


def check_name(name: str) -> None:
    """Fail with the valid choices when ``name`` is not a torchvision classification model."""
    if name not in classification_models():
        raise ConfigError(
            f"backbone.name={name!r} is not a torchvision classification model. "
            f"Choose one of: {', '.join(classification_models())}."
        )


def is_weights_file(weights: str | None) -> bool:
    """True when ``backbone.weights`` names a local file rather than a torchvision weights name."""
    if weights is None:
        return False
    return "/" in weights or "\\" in weights or weights.endswith(CHECKPOINT_SUFFIXES) or Path(weights).is_file()


def named_weights(name: str, weights: str) -> WeightsEnum:
    """The torchvision weights enum member called ``weights`` (e.g. DEFAULT, IMAGENET1K_V2) for ``name``."""
    enum = get_model_weights(name)
    try:
        return enum[weights]
    except KeyError:
        valid = ["DEFAULT", *enum.__members__.keys()]
        raise ConfigError(
            f"backbone.weights={weights!r} is not a weights name of {name}. Choose one of "
            f"{', '.join(dict.fromkeys(valid))}, a path to a state-dict or checkpoint file, or null "
            "for random initialisation."
        ) from None


@dataclass(frozen=True)
class WeightsPreprocessing(Preprocessing):
    """A backbone's preprocessing that knows the smallest crop the backbone takes: ``at_size`` refuses less.

    ``min_size`` is torchvision's ``meta["min_size"]`` of the weights, and at least ``CNN_MIN_SIZE``.
    """

    backbone: str = ""
    min_size: int = CNN_MIN_SIZE

    def at_size(self, image_size: int | None) -> Preprocessing:
        """The plain ``Preprocessing`` at ``image_size``; a ConfigError below ``min_size``."""
        if image_size is not None and image_size < self.min_size:
            why = ("torchvision's min_size for its weights" if self.min_size > CNN_MIN_SIZE else
                   f"its five stride-2 reductions take {CNN_MIN_SIZE} px down to 1x1")
            raise ConfigError(
                f"data.image_size={image_size} is smaller than backbone {self.backbone} can take: its smallest input "
                f"is {self.min_size} px ({why}). Set data.image_size={self.min_size} or more; its weights were "
                f"trained at {self.crop_size}."
            )
        return self.plain().at_size(image_size)

    def plain(self) -> Preprocessing:
        return Preprocessing(**{field.name: getattr(self, field.name) for field in fields(Preprocessing)})

    def to_dict(self) -> dict:
        return self.plain().to_dict()


def preprocessing_for(name: str, weights: str | None) -> WeightsPreprocessing:
    """The preprocessing (resize, crop, mean/std, smallest crop) of a model ``name`` built with ``weights``.

    Named weights bring their own; random init and local files use the architecture's DEFAULT.
    """
    if weights is None or is_weights_file(weights):
        chosen = get_model_weights(name).DEFAULT
    else:
        chosen = named_weights(name, weights)
    min_size = max(CNN_MIN_SIZE, *chosen.meta.get("min_size", ()))
    return WeightsPreprocessing(**asdict(Preprocessing.from_preset(chosen.transforms())), backbone=name,
                                min_size=min_size)


def build_backbone(name: str, weights: str | None, classifier: str | None = None,
                   class_names: list[str] | None = None) -> Backbone:
    """Build ``name`` with ``weights`` and replace its classifier (``classifier`` attribute path) by Identity.

    ``weights`` is a torchvision weights name, a path to a torchvision state dict or transferlab
    checkpoint, or None for random init. ``class_names`` lets a checkpoint's head be reused when
    it was trained on the same classes.
    """
    check_name(name)
    if weights is None or is_weights_file(weights):
        model = get_model(name, weights=None)
    else:
        model = _download_pretrained(name, named_weights(name, weights))
    path = classifier or _last_linear(model, name)
    num_features = _classifier_width(model, path, name)
    model.set_submodule(path, nn.Identity())
    head_state = (_load_file(model, Path(weights).expanduser(), name, path, class_names)
                  if is_weights_file(weights) else None)
    return Backbone(network=model, num_features=num_features, head_state=head_state)


def _download_pretrained(name: str, weights: WeightsEnum) -> nn.Module:
    """``get_model`` with ``weights``, turning a failed download into advice on working offline."""
    try:
        return get_model(name, weights=weights)
    except (URLError, OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "hash" not in str(error):
            raise
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise ConfigError(
            f"Pretrained weights {weights} for backbone {name} are not in the torch hub cache and "
            f"could not be downloaded from {weights.url} ({error}). Put that file at {cached} (copy "
            "it from a machine with internet access; TORCH_HOME moves the cache), or set "
            "backbone.weights=/path/to/state_dict.pth, or train from random init with "
            "backbone.weights=null (or mode=scratch)."
        ) from error


def _last_linear(model: nn.Module, name: str) -> str:
    """Attribute path of the model's final nn.Linear: the classifier of nearly every torchvision model."""
    linears = [path for path, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"backbone {name} has no nn.Linear classifier to replace. Set backbone.classifier to the "
            "attribute path of its classifier (e.g. fc, classifier, heads.head)."
        )
    return linears[-1]


def _classifier_width(model: nn.Module, path: str, name: str) -> int:
    """Input width of the classifier at ``path``: its own, or that of its first nn.Linear."""
    try:
        classifier = model.get_submodule(path)
    except AttributeError:
        top = ", ".join(child for child, _ in model.named_children())
        raise ConfigError(
            f"backbone.classifier={path!r} is not a submodule of {name} (its top-level modules are {top}): a "
            "backbone preset names the classifier of its own architecture. Set backbone.classifier=null to replace "
            f"{name}'s last nn.Linear ({_last_linear(model, name)}), or drop the backbone=... preset and keep "
            f"backbone.name={name} (the default preset finds the classifier)."
        ) from None
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"backbone.classifier={path!r} of {name} contains no nn.Linear layer, so its input width "
            "is unknown. Point backbone.classifier at a linear classifier (or a block starting with one)."
        )
    return linears[0].in_features


def _load_file(network: nn.Module, path: Path, name: str, classifier: str,
               class_names: list[str] | None) -> dict[str, torch.Tensor] | None:
    """Load a state dict or transferlab checkpoint into ``network``; return the reusable head, if any."""
    content = load_safely(path, "backbone.weights", "Give the path of a state-dict or checkpoint file saved with "
                          "torch.save(model.state_dict(), path) from a trusted source, a torchvision weights name "
                          "such as DEFAULT, or null.")
    if isinstance(content, dict) and "state_dict" in content and "hyper_parameters" in content:
        state = content["state_dict"]
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        _load_strict(network, backbone_state, path, name)
        same_classes = content["hyper_parameters"].get("class_names") == class_names
        if not same_classes:
            log.info("Checkpoint %s was trained on other classes: its head is rebuilt.", path)
            return None
        return {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ConfigError(
            f"backbone.weights={path} holds neither a state dict (name -> tensor) nor a transferlab "
            "checkpoint. Save weights with torch.save(model.state_dict(), path)."
        )
    state = {k: v for k, v in content.items() if not _is_under(k, classifier)}
    _load_strict(network, state, path, name)
    return None


def _load_strict(network: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Load ``state`` into ``network`` and fail clearly when the architecture does not match."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        summary = str(error).split("\n\t", 1)[-1][:600]
        raise ConfigError(
            f"backbone.weights={path} does not fit backbone {name}: {summary}. Set backbone.name to "
            "the architecture the file was saved from, or use a file saved from a {name} model."
            .replace("{name}", name)
        ) from error


def _is_under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")
