"""Reading PyTorch files that never run pickled code: every weights, checkpoint and resume file goes through here."""

import pickle
from pathlib import Path
from typing import Any

import torch

from transferlab.errors import ConfigError

# The generic lines of torch's "Weights only load failed" message; what remains names the refused object.
TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def load_safely(path: str | Path, setting: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, every failure a ConfigError naming ``setting=path``.

    ``fix`` ends each message: what the user should give instead. A file holding pickled objects
    other than tensors and plain values is refused, never run.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{setting}={path} does not exist{' (it is a folder)' if path.is_dir() else ''}. {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{setting}={path} was refused: it holds pickled objects other than tensors and plain values "
            f"({unpickling_detail(error)}), or is not a PyTorch file at all. Loading it could run arbitrary "
            f"code, so it was not loaded. {fix}"
        ) from error
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else "no detail"
        raise ConfigError(
            f"{setting}={path} could not be read as a PyTorch file ({type(error).__name__}: {first_line}); it may "
            f"be truncated, still being written, or of another format. {fix}"
        ) from error


def unpickling_detail(error: Exception) -> str:
    """The informative line(s) of torch's long 'Weights only load failed' message."""
    lines = [line.strip() for line in str(error).splitlines()]
    detail = [line for line in lines if line and not line.startswith(TORCH_BOILERPLATE)]
    return " ".join(detail)[:300] or type(error).__name__
