"""Config-group choices on the command line, checked before Hydra composes: ``mode=finetun`` ends with one paragraph
(did you mean finetune? and the choices) instead of Hydra's MissingConfigException, for the Hydra entry points
(``transferlab.train``, ``transferlab.advise``) and the Python API alike.
"""

import difflib
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override
from hydra.errors import HydraException

from transferlab.errors import ConfigError
from transferlab.model.backbones import get_source

# conf/, installed as the package transferlab.conf (the repository's conf/ itself in an editable install): where every
# Hydra entry point reads its configuration
CONFIG_DIR = Path(str(resources.files("transferlab.conf")))

# Hydra's own groups (hydra/launcher, hydra/sweeper, hydra/job_logging, ...) also take choices from installed plugins,
# which no folder lists: Hydra checks those itself.
HYDRA_GROUP = "hydra"


def group_choices(config_dir: str | Path) -> dict[str, list[str]]:
    """Each config group of ``config_dir`` (a folder of .yaml files, ``hydra`` aside) and its choices, sorted."""
    root = Path(config_dir)
    groups: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        relative = path.relative_to(root)
        if len(relative.parts) > 1 and relative.parts[0] != HYDRA_GROUP:
            group = relative.parts[0]  # a file in a sub-folder of a group is a choice "sub/name" of that group
            groups.setdefault(group, []).append(relative.relative_to(group).with_suffix("").as_posix())
    return groups


def _backbone_hint(choice: str) -> str | None:
    """backbone=resnet101 asks for a torchvision model without a preset: backbone.name builds it; backbone=convnext_nano
    for a timm model: backbone=timm backbone.name=... builds it."""
    if choice in get_source("torchvision").models():
        return (f"{choice} is a torchvision model without a preset: backbone.name={choice} builds it with the "
                "default preset (its classifier and stages found from the network).")
    try:
        timm_models = get_source("timm").models()
    except ConfigError:  # timm is not installed
        return None
    if choice in timm_models:
        return f"{choice} is a timm model: backbone=timm backbone.name={choice} builds it."
    return None


HINTS: dict[str, Callable[[str], str | None]] = {"backbone": _backbone_hint}  # group: advice for an unknown choice


def check_group_choices(overrides: Sequence[str], *config_dirs: str | Path) -> None:
    """Raise a ConfigError (one paragraph: the closest choice and every valid one) when an override picks a
    config-group choice (``mode=finetun``, ``-m mode=scratch,finetun``) that none of ``config_dirs`` has.

    Overrides Hydra cannot parse, globs, ranges, deletions and ``hydra/...`` groups are left to Hydra; so is
    everything when ``hydra.searchpath`` adds config folders this check does not see.
    """
    parsed = [_parse(override) for override in overrides]
    if any(o is not None and o.key_or_group.startswith("hydra.searchpath") for o in parsed):
        return
    choices: dict[str, list[str]] = {}
    for config_dir in config_dirs:
        for group, names in group_choices(config_dir).items():
            choices[group] = sorted({*choices.get(group, []), *names})
    problems = [_problem(override, choice, choices[override.key_or_group])
                for override in parsed if override is not None and override.key_or_group in choices
                for choice in _choices_of(override) if choice not in choices[override.key_or_group]]
    if problems:
        raise ConfigError(" ".join(problems))


def exit_on_bad_choices(prog: str, argv: Sequence[str], config_dir: str | Path) -> None:
    """``check_group_choices`` on a Hydra command line (``argv`` without the program): a bad choice prints
    ``prog: error: ...`` to stderr and exits with status 2, as argparse does."""
    arguments = get_args_parser().parse_args(list(argv))
    extra = [arguments.config_dir] if arguments.config_dir else []  # --config-dir adds a folder of choices
    try:
        check_group_choices(arguments.overrides, config_dir, *extra)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(2)


def _parse(override: str) -> Override | None:
    try:
        return OverridesParser.create().parse_override(override)
    except HydraException:  # Hydra reports it with its own message, but for a home folder written as ~
        key, _, value = override.partition("=")
        if value.startswith("~"):
            raise ConfigError(f"{override}: Hydra's override grammar does not take '~' in a value, and the shell "
                              f"does not expand it after '='. Write {key}=$HOME{value[1:]} (the shell expands "
                              "$HOME), or a relative path.") from None
        return None


def _choices_of(override: Override) -> list[str]:
    """The choices an override names: one, a list, or a comma sweep's; none for deletions, globs and ranges."""
    if override.is_delete():
        return []
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return [choice for choice in override.sweep_string_iterator() if choice != "null"]
    if override.is_sweep_override():
        return []
    return [str(choice) for choice in (value if isinstance(value, list) else [value]) if choice is not None]


def _problem(override: Override, choice: str, valid: list[str]) -> str:
    group = override.key_or_group
    hint = HINTS.get(group, lambda _: None)(choice)
    if hint is None:
        close = difflib.get_close_matches(choice, valid, n=1)
        hint = f"Did you mean {close[0]}?" if close else ""
    return (f"{override.input_line}: there is no conf/{group}/{choice}.yaml. {hint} The choices of {group} are: "
            f"{', '.join(valid)}.").replace("  ", " ")
