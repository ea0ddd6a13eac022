"""timm's backbones (``backbone=timm``, the ``timm`` extra): ``create_model`` by name, the head removed with
``reset_classifier(0)`` (so the network returns ``forward_head(pre_logits=True)``), preprocessing from the model's
``pretrained_cfg``, stages from its ``group_matcher``.

Weights: ``DEFAULT`` (timm's pretrained weights through the Hugging Face cache; offline when the cache holds
them), a pretrained tag of the model (``augreg_in21k``: ``name.tag``), ``hf-hub:ORG/REPO``, a local file (a
state dict, ``.safetensors``, a transferlab or timm checkpoint), or None.
"""

import math
import re
from pathlib import Path
from typing import Any

from torch import nn

from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.model.backbones import (
    HUB_PREFIX,
    Backbone,
    BackboneSource,
    StageRule,
    WeightsPreprocessing,
    is_weights_file,
    load_weights_file,
    with_limits,
)
from transferlab.model.stages import family_rule, is_block

INSTALL = "pip install 'transferlab[timm]'"
DEFAULT_WEIGHTS = "DEFAULT"
JOINS_PREVIOUS = (99999,)  # a group_matcher suffix: these parameters join the group before them (timm's own mark)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"backbone=timm needs timm, which is not installed: {INSTALL}.") from None
    return timm


class TimmSource(BackboneSource):
    name = "timm"
    listing = "python -c \"import timm; print(timm.list_models('PATTERN*'))\""

    def models(self) -> list[str]:
        return _timm().list_models()

    def check_name(self, name: str) -> None:
        """A model name, or ``name.tag`` with one of timm's pretrained tags of it."""
        timm = _timm()
        architecture, tag = timm.models.split_model_name_tag(name)
        if not tag:
            return super().check_name(name)
        super().check_name(architecture)
        if name not in timm.list_pretrained(f"{architecture}.*"):
            tags = ", ".join(timm.list_pretrained(f"{architecture}.*")) or "none"
            raise ConfigError(f"backbone.name={name!r}: {architecture} has no pretrained tag {tag!r}. Its "
                              f"pretrained weights are: {tags}.")

    def preprocessing(self, name: str, weights: str | None) -> WeightsPreprocessing:
        """The model's ``pretrained_cfg`` (mean, std, interpolation, crop_pct, input size; fixed or not)."""
        self.check_name(name)
        cfg = self._pretrained_cfg(name, weights)
        size = int(cfg.input_size[-1])
        preprocessing = Preprocessing(size, math.floor(size / cfg.crop_pct), tuple(map(float, cfg.mean)),
                                      tuple(map(float, cfg.std)), _interpolation(cfg.interpolation))
        smallest = int(cfg.min_input_size[-1]) if cfg.min_input_size else 0
        return with_limits(preprocessing, name, smallest, "timm's min_input_size for its weights",
                           size if cfg.fixed_input_size else None)

    def _pretrained_cfg(self, name: str, weights: str | None) -> Any:
        timm = _timm()
        tagged = f"{name}.{weights}" if _is_tag(weights) else name
        try:
            cfg = timm.models.get_pretrained_cfg(tagged)
        except RuntimeError:
            raise _bad_weights(name, weights) from None
        return cfg or timm.models.PretrainedCfg()  # an architecture without pretrained weights: timm's defaults

    def build(self, name: str, weights: str | None, classifier: str | None,
              class_names: list[str] | None) -> Backbone:
        timm = _timm()
        if weights is None or is_weights_file(weights):
            model = timm.create_model(name, pretrained=False)
        else:
            model = _download_pretrained(timm, name, weights, self._pretrained_cfg(name, weights))
        classifiers = (classifier,) if classifier else _classifier_paths(model)
        model.reset_classifier(0)
        num_features = getattr(model, "head_hidden_size", None) or model.num_features
        head_state = (load_weights_file(model, Path(weights).expanduser(), name, classifiers, class_names)
                      if is_weights_file(weights) else None)
        return Backbone(network=model, num_features=int(num_features), head_state=head_state)

    def stage_rule(self) -> StageRule:
        return group_rule


SOURCE = TimmSource()


def _is_tag(weights: str | None) -> bool:
    return weights is not None and weights != DEFAULT_WEIGHTS and not weights.startswith(HUB_PREFIX) and \
        not is_weights_file(weights)


def _interpolation(name: str) -> str:
    return name if name in ("nearest", "bilinear", "bicubic") else "bicubic"  # timm's "random" etc.: train-only


def _classifier_paths(model: nn.Module) -> tuple[str, ...]:
    """Where the model's classifier lives (``pretrained_cfg['classifier']``: a path, or several for two heads)."""
    declared = model.pretrained_cfg.get("classifier") or "classifier"
    return tuple(declared) if isinstance(declared, list | tuple) else (declared,)


def _bad_weights(name: str, weights: str | None) -> ConfigError:
    tags = ", ".join(t.split(".", 1)[1] for t in _timm().list_pretrained(f"{name}.*")) or "none"
    return ConfigError(f"backbone.weights={weights!r} is not a weights name of timm's {name}. Give DEFAULT, one of "
                       f"its pretrained tags ({tags}), hf-hub:ORG/REPO, a path to a weights file, or null for random "
                       "initialisation.")


def _download_pretrained(timm: Any, name: str, weights: str, cfg: Any) -> nn.Module:
    """``create_model(pretrained=True)`` from timm's cache or the Hub; a failure becomes advice on working offline."""
    hub_id = weights.removeprefix(HUB_PREFIX) if weights.startswith(HUB_PREFIX) else cfg.hf_hub_id
    model_name = f"{name}.{weights}" if _is_tag(weights) else name
    overlay = {"hf_hub_id": hub_id} if weights.startswith(HUB_PREFIX) else None
    try:
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as error:  # the Hub client raises its own errors (offline, not found, HTTP), not OSError alone
        from huggingface_hub.constants import HF_HUB_CACHE
        raise ConfigError(
            f"Pretrained weights of timm's {model_name} (Hugging Face Hub {hub_id or cfg.url}) are not in the "
            f"cache and could not be downloaded ({type(error).__name__}: {str(error)[:300]}). On a machine with "
            f"internet access run python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\" and "
            f"copy its cache ({HF_HUB_CACHE}; HF_HOME moves it) here, or set backbone.weights=/path/to/weights "
            "(.safetensors or a state dict), or train from random init with backbone.weights=null (or mode=scratch)."
        ) from error


def group_rule(network: nn.Module, name: str) -> list[tuple[str, list[str]]]:
    """The stages of timm's coarse ``group_matcher`` (one per stage or block), as the modules they own whole.

    A group is a stage when its parameters match one of the matcher's stage patterns (``blocks``, ``stages``; not
    ``stem``, and not the patterns that join the previous group): the stem group, and what no pattern matches (a
    head's norm), stand before or after the stages, and ``transferlab.model.stages`` gives them to the stage that
    follows, or to the last. Networks without a matcher use the family rule.
    """
    matcher = getattr(network, "group_matcher", None)
    if matcher is None:
        return family_rule(network, name)
    from timm.models import group_parameters

    spec = matcher(coarse=True)
    patterns = _stage_patterns(spec)
    groups = group_parameters(network, spec)
    roots = []
    for index in sorted(groups):
        names = set(groups[index])
        owned = _owned_whole(network, names)
        is_stage = (any(p.match(n) for p in patterns for n in names) if patterns is not None else
                    any(is_block(network.get_submodule(path)) for path in owned))
        if is_stage and owned:
            roots.append((owned[0], owned))
    return roots if len(roots) >= 2 else family_rule(network, name)


def _stage_patterns(spec: Any) -> list[re.Pattern] | None:
    """The regexes of a dict matcher that start a stage; None for a matcher given as a function."""
    if not isinstance(spec, dict):
        return None
    patterns = []
    for key, value in spec.items():
        if key == "stem" or value is None:
            continue
        entries = value if isinstance(value, list | tuple) else [(value, None)]
        patterns += [re.compile(pattern) for pattern, suffix in entries if tuple(suffix or ()) != JOINS_PREVIOUS]
    return patterns


def _owned_whole(network: nn.Module, parameter_names: set[str]) -> list[str]:
    """The outermost modules all of whose parameters are in ``parameter_names``, in the network's order."""
    owned: list[str] = []
    for path, module in network.named_modules():
        if not path or any(path.startswith(root + ".") for root in owned):
            continue
        mine = [f"{path}.{n}" for n, _ in module.named_parameters()]
        if mine and all(n in parameter_names for n in mine):
            owned.append(path)
    return owned
