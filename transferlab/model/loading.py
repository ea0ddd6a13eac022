"""Reading PyTorch files that never run pickled code: every weights, checkpoint and resume file goes through here."""

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from transferlab.errors import ConfigError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # a pickle's PROTO opcode: the legacy torch.save format
# The name of the object a weights-only load refused, in torch's two phrasings of it.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*) (?:was not an allowed global|whose module)")
# Lines of torch's "Weights only load failed" message that say nothing about the file.
TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


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
    except Exception as error:  # a foreign file makes torch.load raise almost anything: IndexError, KeyError, ...
        raise ConfigError(f"{setting}={path} {why_unreadable(path, error)}. {fix}") from error


def why_unreadable(path: Path, error: Exception) -> str:
    """One sentence on why ``torch.load(path, weights_only=True)`` failed with ``error``, the real reason first."""
    refused = _REFUSED_GLOBAL.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if refused:
        name = re.sub(r"^(posix|nt)\.", "os.", refused[1])  # os.system is posix.system on Linux
        return f"was refused: it holds a pickled reference to {name}, which could run code, so it was not loaded"
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as read_error:
        return f"could not be read ({read_error.strerror or read_error})"
    if isinstance(error, OSError):
        return f"could not be read ({error.strerror or error})"
    if not head:
        return "is empty (0 bytes), so it is not a PyTorch file; the save or copy that wrote it may have failed"
    detail = _detail(error)
    is_zip, is_pickle = head.startswith(ZIP_MAGIC), head.startswith(PICKLE_MAGIC)
    zip_end_missing = "central directory" in detail or "not a ZIP archive" in detail
    if (is_zip and zip_end_missing) or ((is_zip or is_pickle) and isinstance(error, EOFError)):
        return (f"is truncated or damaged: it starts as a PyTorch file but ends early ({detail}); it may still be "
                "being written, or be an interrupted copy or download")
    if isinstance(error, pickle.UnpicklingError) and (is_zip or is_pickle) and "Unsupported operand" not in detail:
        return (f"was refused: it holds pickled objects other than tensors and plain values ({detail}), which "
                "could run code, so it was not loaded")
    if is_zip or is_pickle:
        kind = "zip archive" if is_zip else "pickle"
        return f"is not a PyTorch file (a {kind} that torch.save did not write: {detail})"
    return f"is not a PyTorch file (it starts with {head!r}, not with the zip or pickle header torch.save writes)"


def _detail(error: Exception) -> str:
    """The informative first sentence of torch's message, without its generic advice lines."""
    lines = [line.strip() for line in str(error).splitlines()]
    detail = [line for line in lines if line and not line.startswith(TORCH_BOILERPLATE)]
    text = " ".join(detail).removeprefix("WeightsUnpickler error: ").removeprefix("PytorchStreamReader ")
    text = re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", text)  # c10's source location
    text = text.split(". ", 1)[0].rstrip(".")  # torch's later sentences are advice, e.g. "This is an internal..."
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
