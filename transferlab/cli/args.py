"""The ``key=value`` command lines of predict, evaluate and export, and the devices they run on."""

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from transferlab.errors import ConfigError

Schema = TypeVar("Schema")


def option_names(options: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of every leaf of a nested dict of options, e.g. ``ckpt``, ``data.root``."""
    names = []
    for key, value in options.items():
        names += option_names(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return names


def parse_cli(schema: type[Schema], argv: list[str], usage: str) -> DictConfig:
    """``key=value`` arguments merged over the dataclass ``schema``'s defaults, every mistake a ConfigError.

    Unknown keys list the valid ones; values of the wrong type and required options left out
    (``MISSING`` in the schema) name the option.
    """
    defaults = OmegaConf.structured(schema)
    valid = ", ".join(option_names(OmegaConf.to_container(defaults, throw_on_missing=False)))
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
