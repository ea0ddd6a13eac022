"""A backbone's stages: its natural blocks, from input to output, which ``mode=partial``, stage-wise unfreezing and
``optimizer.layer_decay`` act on.

A stage is named by a module path (``layer3``) or a range of a Sequential's children (``features.10-16``, both
ends included). ``backbone.stages`` lists them; without it a family rule finds them from the network's structure:
the blocks (children that hold sub-blocks) of ``features`` (EfficientNet, MobileNet, ConvNeXt, Swin, DenseNet),
``trunk_output`` (RegNet), ``encoder.layers`` (ViT), ``layers`` (MNASNet), ``blocks`` (MaxViT) or the network itself
(ResNet: ``layer1..layer4``, ShuffleNet); a ``features`` Sequential of plain layers (VGG, AlexNet) splits after each
max-pool. Every backbone parameter belongs to exactly one stage: what comes before the first stage (the stem) to
the first, what lies between two stages (a downsampling layer) to the next, what follows the last (a final norm)
to the last. So training every stage trains the whole backbone, and training none freezes it all.
"""

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from transferlab.errors import ConfigError

log = logging.getLogger(__name__)

CONTAINERS = ("features", "trunk_output", "encoder.layers", "layers", "blocks", "")  # "": the network itself
AUXILIARY = re.compile(r"aux", re.IGNORECASE)  # GoogLeNet's aux1/aux2, Inception's AuxLogits: side heads, not stages
RANGE = re.compile(r"^(?:(?P<parent>.+)\.)?(?P<first>\d+)-(?P<last>\d+)$")
WHOLE = "backbone"  # the one stage of a backbone whose stages are not needed and not found


@dataclass(frozen=True)
class Stage:
    """One stage: the sub-modules it owns whole and the parameters it owns (theirs, and any a container holds),
    by their paths in the backbone, so that moving the network (``.to(device)``) never leaves a stale reference."""

    name: str
    module_paths: tuple[str, ...]
    parameter_names: tuple[str, ...]

    def modules(self, network: nn.Module) -> list[nn.Module]:
        return [network.get_submodule(path) for path in self.module_paths]

    def parameters(self, network: nn.Module) -> list[nn.Parameter]:
        return [network.get_parameter(name) for name in self.parameter_names]

    def numel(self, network: nn.Module) -> int:
        return sum(p.numel() for p in self.parameters(network))

    def has_batchnorm(self, network: nn.Module) -> bool:
        return any(isinstance(m, _BatchNorm) for module in self.modules(network) for m in module.modules())


def find_stages(network: nn.Module, name: str, paths: Sequence[str] | None = None, strict: bool = True,
                rule: Callable[[nn.Module, str], list[tuple[str, list[str]]]] | None = None) -> list[Stage]:
    """The stages of backbone ``name`` (input to output): ``paths`` (``backbone.stages``), else ``rule`` (its
    source's: stage names and the module paths each starts from), else the family rule.

    ``strict=False`` (for runs that treat all stages alike) turns a layout that cannot be split into one stage.
    """
    try:
        roots = _resolve(network, name, list(paths)) if paths else (rule or family_rule)(network, name)
        return _partition(network, name, roots)
    except ConfigError as error:
        if strict:
            raise
        log.info("Backbone %s taken as one stage (its stages are not needed in this run): %s", name, error)
        return [Stage(WHOLE, ("",), tuple(n for n, _ in network.named_parameters()))]


def _resolve(network: nn.Module, name: str, paths: list[str]) -> list[tuple[str, list[str]]]:
    """``backbone.stages`` entries as (stage name, module paths it starts from), ranges expanded."""
    roots = []
    for path in paths:
        match = RANGE.match(str(path))
        if match:
            parent = match["parent"] or ""
            first, last = int(match["first"]), int(match["last"])
            children = [n for n, _ in _submodule(network, parent, name, path).named_children()]
            if not first <= last < len(children):
                raise _bad_path(network, name, path, f"{parent or name} has children 0-{len(children) - 1}")
            roots.append((path, [_join(parent, children[i]) for i in range(first, last + 1)]))
        else:
            _submodule(network, str(path), name, path)
            roots.append((str(path), [str(path)]))
    return roots


def family_rule(network: nn.Module, name: str) -> list[tuple[str, list[str]]]:
    """The stages the structure shows: blocks of the first container that has two or more, else max-pool splits."""
    for container_path in CONTAINERS:
        try:
            container = network.get_submodule(container_path)
        except AttributeError:
            continue
        blocks = [_join(container_path, n) for n, child in container.named_children()
                  if is_block(child) and not AUXILIARY.search(n)]
        if len(blocks) >= 2:
            return [(path, [path]) for path in blocks]
        if container_path and isinstance(container, nn.Sequential) and not blocks:
            split = _split_at_pools(container_path, container)
            if len(split) >= 2:
                return split
    raise _stages_error(network, f"backbone {name} has no stage layout transferlab recognises (no features, "
                        "trunk_output, encoder.layers, layers or blocks container with two or more blocks)",
                        "Set backbone.stages to its stages.")


def is_block(module: nn.Module) -> bool:
    """A block holds sub-blocks (a child with children of its own), unlike a plain conv/norm/activation layer."""
    return any(next(child.children(), None) is not None for child in module.children())


def _split_at_pools(path: str, container: nn.Sequential) -> list[tuple[str, list[str]]]:
    """A Sequential of plain layers (VGG's ``features``) as ranges that each end with a max-pool."""
    names = [n for n, _ in container.named_children()]
    ends = [i for i, child in enumerate(container.children()) if isinstance(child, nn.MaxPool2d)]
    if ends and ends[-1] != len(names) - 1:
        ends.append(len(names) - 1)
    starts = [0, *(end + 1 for end in ends[:-1])]
    return [(f"{path}.{first}-{last}", [_join(path, names[i]) for i in range(first, last + 1)])
            for first, last in zip(starts, ends, strict=True)]


def _partition(network: nn.Module, name: str, roots: list[tuple[str, list[str]]]) -> list[Stage]:
    """Give every module and parameter of ``network`` to one stage: stage roots to theirs, the rest to the next."""
    owner = {path: index for index, (_, paths) in enumerate(roots) for path in paths}
    units: list[tuple[int | None, str | None, list[str]]] = []  # (stage, path of a module owned whole, parameters)

    def walk(prefix: str, module: nn.Module) -> None:
        names = lambda recurse: [_join(prefix, n) for n, _ in module.named_parameters(recurse=recurse)]
        if prefix in owner:
            units.append((owner[prefix], prefix, names(True)))
        elif not any(prefix == "" or path.startswith(prefix + ".") for path in owner):
            units.append((None, prefix, names(True)))
        else:  # holds a stage: its own parameters (ViT's class_token), then its children in order
            units.append((None, None, names(False)))
            for child_name, child in module.named_children():
                walk(_join(prefix, child_name), child)

    walk("", network)
    order = [stage for stage, _, _ in units if stage is not None]
    if order != sorted(order) or set(order) != set(range(len(roots))):
        listed = ", ".join(stage_name for stage_name, _ in roots)
        raise ConfigError(
            f"backbone.stages=[{listed}] does not split backbone {name} into stages: they must be listed from input "
            "to output, and none may lie inside another. List non-overlapping module paths in the order the "
            "network runs them, or set backbone.stages=null to use the built-in rule."
        )
    paths: list[list[str]] = [[] for _ in roots]
    parameters: list[list[str]] = [[] for _ in roots]
    pending: list[tuple[str | None, list[str]]] = []
    for stage, path, params in [*units, (len(roots) - 1, None, [])]:  # what follows the last stage is the last's
        pending.append((path, params))
        if stage is not None:
            for held_path, held_params in pending:
                paths[stage] += [held_path] if held_path is not None else []
                parameters[stage] += held_params
            pending = []
    stages = [Stage(stage_name, tuple(paths[i]), tuple(parameters[i])) for i, (stage_name, _) in enumerate(roots)]
    owned = [p for stage in stages for p in stage.parameter_names]
    assert sorted(owned) == sorted(n for n, _ in network.named_parameters()), "stages must partition the parameters"
    return stages


def _submodule(network: nn.Module, path: str, name: str, entry: str) -> nn.Module:
    try:
        return network.get_submodule(path)
    except AttributeError:
        raise _bad_path(network, name, entry, f"{path!r} is not a submodule of {name}") from None


def _bad_path(network: nn.Module, name: str, entry: str, why: str) -> ConfigError:
    return _stages_error(network, f"backbone.stages entry {entry!r} does not name a part of backbone {name}: {why}",
                         "A stage list written for another backbone.name does not fit this one: set "
                         "backbone.stages=null to use the built-in rule, or list this backbone's stages.")


def _stages_error(network: nn.Module, problem: str, fix: str) -> ConfigError:
    """One paragraph: what is wrong, the network's top-level modules, the fix and how stages are written."""
    top = ", ".join(n for n, _ in network.named_children())
    return ConfigError(
        f"{problem} (its top-level modules are {top}). {fix} backbone.stages lists module paths from input to "
        "output (e.g. backbone.stages=[layer1,layer2,layer3,layer4]) or ranges of a Sequential's children, both "
        "ends included (e.g. backbone.stages=[features.0-4,features.5-9])."
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
