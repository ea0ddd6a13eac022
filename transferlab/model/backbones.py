"""Backbones, one home: where a backbone comes from (a ``BackboneSource``: torchvision, timm) and what names it (a
``BackboneSpec``: source, name, weights, classifier, stages).

Every caller asks a spec or a source, never a library: check the name (with "did you mean"), build the network
without its classifier (and its feature width), its preprocessing and input-size rule, its stages, and how to
spell it as ``transferlab train`` overrides. Weights are a source's name for them (``DEFAULT``), a local file
(a state dict, ``.safetensors``, a transferlab or timm checkpoint) or None (random initialisation).
"""

import difflib
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.model.loading import load_safely
from transferlab.model.stages import Stage, find_stages

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
CNN_MIN_SIZE = 32  # five stride-2 reductions (ResNet, VGG, MobileNet, ...) take 32 px down to 1x1
HUB_PREFIX = "hf-hub:"  # a Hugging Face Hub weights name (timm), not a path although it holds a "/"
DEFAULT_SOURCE = "torchvision"  # what checkpoints written before sources existed were built with
# source name -> the module whose SOURCE it is; imported on first use, so timm loads only for timm backbones
SOURCES = {"torchvision": "transferlab.model.torchvision_backbones", "timm": "transferlab.model.timm_backbones"}
StageRule = Callable[[nn.Module, str], list[tuple[str, list[str]]]]


@dataclass
class Backbone:
    """A feature extractor and what the head needs to know about it."""

    network: nn.Module  # the network with its classifier replaced by nn.Identity
    num_features: int  # width of the features it returns
    head_state: dict[str, torch.Tensor] | None = None  # a transferlab checkpoint's head, when reusable


@dataclass(frozen=True)
class WeightsPreprocessing(Preprocessing):
    """A backbone's preprocessing that knows the input sizes the backbone takes: ``at_size`` refuses others.

    ``min_size`` is the smallest crop (at least ``CNN_MIN_SIZE``); ``fixed_size`` the only one, for networks that
    assert their input size (ViT's position embeddings), else None.
    """

    backbone: str = ""
    min_size: int = CNN_MIN_SIZE
    fixed_size: int | None = None
    min_size_origin: str = "its weights' smallest input"  # why ``min_size`` is what it is, above CNN_MIN_SIZE

    def at_size(self, image_size: int | None) -> Preprocessing:
        """The plain ``Preprocessing`` at ``image_size``; a ConfigError for a size the backbone cannot take."""
        if image_size is not None and image_size < self.min_size:
            why = (self.min_size_origin if self.min_size > CNN_MIN_SIZE else
                   f"its five stride-2 reductions take {CNN_MIN_SIZE} px down to 1x1")
            raise ConfigError(
                f"data.image_size={image_size} is smaller than backbone {self.backbone} can take: its smallest input "
                f"is {self.min_size} px ({why}). Set data.image_size={self.min_size} or more; its weights were "
                f"trained at {self.crop_size}."
            )
        if image_size is not None and self.fixed_size is not None and image_size != self.fixed_size:
            raise ConfigError(
                f"data.image_size={image_size} does not fit backbone {self.backbone}: it takes only "
                f"{self.fixed_size} px inputs (its position embeddings are made for that size). Set "
                f"data.image_size={self.fixed_size}, or choose a convolutional backbone to train at another size."
            )
        return self.plain().at_size(image_size)

    def plain(self) -> Preprocessing:
        return Preprocessing(**{field.name: getattr(self, field.name) for field in fields(Preprocessing)})

    def to_dict(self) -> dict:
        return self.plain().to_dict()


def with_limits(preprocessing: Preprocessing, backbone: str, min_size: int, min_size_origin: str,
                fixed_size: int | None = None) -> WeightsPreprocessing:
    """``preprocessing`` with the input sizes ``backbone`` takes: at least ``min_size`` (and ``CNN_MIN_SIZE``),
    which ``min_size_origin`` explains; only ``fixed_size`` where that is set."""
    return WeightsPreprocessing(**asdict(preprocessing), backbone=backbone, min_size=max(CNN_MIN_SIZE, min_size),
                                fixed_size=fixed_size, min_size_origin=min_size_origin)


class BackboneSource(ABC):
    """Where backbones come from: one library's names, networks, weights, preprocessing and stages."""

    name: str

    @abstractmethod
    def models(self) -> list[str]:
        """Every model name the source builds."""

    def check_name(self, name: str) -> None:
        """A ConfigError with the closest names when ``name`` is not one of ``models()``."""
        known = self.models()
        if name in known:
            return
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"Did you mean {', '.join(close)}? " if close else ""
        choices = (f"Choose one of: {', '.join(known)}." if len(known) <= 150 else
                   f"It has {len(known)} models; list them with {self.listing}.")
        raise ConfigError(f"backbone.name={name!r} is not a {self.name} classification model. {hint}{choices}")

    listing = ""  # how a user lists the names, where there are too many to print

    @abstractmethod
    def build(self, name: str, weights: str | None, classifier: str | None,
              class_names: list[str] | None) -> Backbone:
        """``name`` with ``weights``, its classifier replaced by Identity (``classifier``: its path, None: found)."""

    @abstractmethod
    def preprocessing(self, name: str, weights: str | None) -> WeightsPreprocessing:
        """The eval preprocessing of ``name`` with ``weights``; random init and files use the architecture's."""

    def stage_rule(self) -> StageRule | None:
        """How stages are found in this source's networks; None: ``transferlab.model.stages``' family rule."""
        return None

    def describe(self, weights: str | None) -> str:
        return "random init" if weights is None else Path(weights).name if is_weights_file(weights) else weights


def source_of(name: str) -> str:
    """The first source (torchvision, then timm) that has a model ``name``; torchvision where none has it, so
    that its check names the closest choices."""
    for source in SOURCES:
        try:
            get_source(source).check_name(name)
        except ConfigError:
            continue
        return source
    return DEFAULT_SOURCE


def get_source(name: str) -> BackboneSource:
    """The source called ``name`` (``backbone.source``)."""
    if name not in SOURCES:
        raise ConfigError(f"backbone.source={name!r} is not a backbone source. Choose one of: {', '.join(SOURCES)} "
                          "(backbone=timm selects timm's).")
    return importlib.import_module(SOURCES[name]).SOURCE


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone: its source, name, weights, classifier path and stages, as ``conf/backbone/`` spells them."""

    name: str
    weights: str | None = "DEFAULT"
    classifier: str | None = None
    stages: tuple[str, ...] | None = None
    source: str = DEFAULT_SOURCE

    @classmethod
    def from_config(cls, node: Mapping[str, Any], **changes: Any) -> "BackboneSpec":
        """From a ``backbone`` config node (or a dict of its keys); ``changes`` replace keys."""
        values = {key: node.get(key) for key in ("name", "weights", "classifier", "stages", "source")}
        values = {**values, **changes}
        stages = values.get("stages")
        return cls(name=values["name"], weights=values["weights"], classifier=values.get("classifier"),
                   stages=tuple(stages) if stages else None, source=values.get("source") or DEFAULT_SOURCE)

    @property
    def backend(self) -> BackboneSource:
        return get_source(self.source)

    def check(self) -> None:
        self.backend.check_name(self.name)

    def build(self, class_names: list[str] | None = None) -> Backbone:
        self.check()
        return self.backend.build(self.name, self.weights, self.classifier, class_names)

    def preprocessing(self) -> WeightsPreprocessing:
        return self.backend.preprocessing(self.name, self.weights)

    def find_stages(self, network: nn.Module, strict: bool = True) -> list[Stage]:
        """Its stages in ``network``: ``stages`` where given, else the source's rule."""
        return find_stages(network, self.name, self.stages, strict, rule=self.backend.stage_rule())

    def label(self) -> str:
        """How a table names it: the name, and its weights where they are not the default."""
        return self.name if self.weights == "DEFAULT" else f"{self.name} ({self.backend.describe(self.weights)})"

    def overrides(self, preset: str, group: Mapping[str, Any]) -> list[tuple[str, str | None]]:
        """``("backbone", preset)``, then ``(backbone.<key>, value)`` for each key where this spec differs from
        ``group`` (the preset's conf/backbone/ values): the spec as ``transferlab train`` overrides."""
        stages = list(group["stages"]) if group.get("stages") else None
        own = {"name": self.name, "weights": self.weights, "classifier": self.classifier,
               "stages": list(self.stages) if self.stages else None}
        given = {**group, "stages": stages}
        changed = [(f"backbone.{key}", f"[{','.join(value)}]" if isinstance(value, list) else value)
                   for key, value in own.items() if value != given.get(key)]
        return [("backbone", preset), *changed]


def is_weights_file(weights: str | None) -> bool:
    """True when ``backbone.weights`` names a local file rather than a source's weights name."""
    if weights is None or weights.startswith(HUB_PREFIX):
        return False
    return "/" in weights or "\\" in weights or weights.endswith(CHECKPOINT_SUFFIXES) or Path(weights).is_file()


WEIGHTS_FILE_FIX = ("Give the path of a state-dict file (torch.save(model.state_dict(), path), or .safetensors) or "
                    "checkpoint from a trusted source, a weights name such as DEFAULT, or null.")


def read_weights_file(path: Path) -> Any:
    """A weights file's content: ``.safetensors`` through safetensors, anything else with ``torch.load``
    (weights only)."""
    if path.suffix != ".safetensors" or not path.is_file():
        return load_safely(path, "backbone.weights", WEIGHTS_FILE_FIX)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"backbone.weights={path} is a .safetensors file: pip install safetensors to read it "
                          "(transferlab[timm] has it).") from None
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError
        raise ConfigError(f"backbone.weights={path} is not a readable .safetensors file ({error}). "
                          f"{WEIGHTS_FILE_FIX}") from error


def load_weights_file(network: nn.Module, path: Path, name: str, classifiers: tuple[str, ...],
                      class_names: list[str] | None) -> dict[str, torch.Tensor] | None:
    """Load a weights file into ``network``; return a transferlab checkpoint's head when it fits ``class_names``.

    A plain state dict may hold the classifier (``classifiers``: its paths), which is left out; a timm training
    checkpoint's ``state_dict`` (or ``model``) is read like one.
    """
    content = read_weights_file(path)
    if isinstance(content, dict) and "state_dict" in content and "hyper_parameters" in content:
        state = content["state_dict"]
        backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        _load_strict(network, backbone_state, path, name)
        if content["hyper_parameters"].get("class_names") != class_names:
            log.info("Checkpoint %s was trained on other classes: its head is rebuilt.", path)
            return None
        return {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    for key in ("state_dict", "model"):  # timm's train.py checkpoints (and many others) wrap the state dict
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = {k.removeprefix("module."): v for k, v in content[key].items()}
            break
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ConfigError(
            f"backbone.weights={path} holds neither a state dict (name -> tensor) nor a transferlab "
            "checkpoint. Save weights with torch.save(model.state_dict(), path)."
        )
    state = {k: v for k, v in content.items() if not any(_is_under(k, prefix) for prefix in classifiers)}
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
            f"the architecture the file was saved from, or use a file saved from a {name} model."
        ) from error


def _is_under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


# The one-call forms most callers need: a torchvision backbone unless ``source`` says otherwise.
def build_backbone(name: str, weights: str | None, classifier: str | None = None,
                   class_names: list[str] | None = None, source: str = DEFAULT_SOURCE) -> Backbone:
    """Build ``name`` with ``weights`` and its classifier (``classifier`` attribute path) replaced by Identity."""
    return BackboneSpec(name, weights, classifier, source=source).build(class_names)


def preprocessing_for(name: str, weights: str | None, source: str = DEFAULT_SOURCE) -> WeightsPreprocessing:
    """The preprocessing (resize, crop, mean/std, input-size rule) of ``name`` built with ``weights``."""
    return get_source(source).preprocessing(name, weights)


def check_name(name: str, source: str = DEFAULT_SOURCE) -> None:
    get_source(source).check_name(name)
