"""torchvision's backbones (``backbone.source=torchvision``): ``get_model`` by name, weights named by its enums
(``DEFAULT``, ``IMAGENET1K_V2``) with their ``transforms()``, the classifier found as the last ``nn.Linear``."""

from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_builder, get_model_weights, list_models

from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.model.backbones import (
    Backbone,
    BackboneSource,
    WeightsPreprocessing,
    is_weights_file,
    load_weights_file,
    with_limits,
)

FIXED_SIZE_FAMILIES = ("torchvision.models.vision_transformer",)  # ViT asserts its input is the size it was built at


class TorchvisionSource(BackboneSource):
    name = "torchvision"

    def models(self) -> list[str]:
        return list_models(module=torchvision.models)

    def preprocessing(self, name: str, weights: str | None) -> WeightsPreprocessing:
        """Named weights bring their own ``transforms()``; random init and local files use the DEFAULT's."""
        self.check_name(name)
        chosen = get_model_weights(name).DEFAULT if weights is None or is_weights_file(weights) else \
            named_weights(name, weights)
        preprocessing = Preprocessing.from_preset(chosen.transforms())
        fixed = preprocessing.crop_size if get_model_builder(name).__module__ in FIXED_SIZE_FAMILIES else None
        return with_limits(preprocessing, name, max(chosen.meta.get("min_size", (0,))),
                           "torchvision's min_size for its weights", fixed)

    def build(self, name: str, weights: str | None, classifier: str | None,
              class_names: list[str] | None) -> Backbone:
        if weights is None or is_weights_file(weights):
            model = get_model(name, weights=None)
        else:
            model = _download_pretrained(name, named_weights(name, weights))
        path = classifier or _last_linear(model, name)
        num_features = _classifier_width(model, path, name)
        model.set_submodule(path, nn.Identity())
        head_state = (load_weights_file(model, Path(weights).expanduser(), name, (path,), class_names)
                      if is_weights_file(weights) else None)
        return Backbone(network=model, num_features=num_features, head_state=head_state)


SOURCE = TorchvisionSource()


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
