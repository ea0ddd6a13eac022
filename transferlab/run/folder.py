"""A run folder belongs to one run: claimed (locked) while the run lives, reused only to resume it.

``claim`` checks the folder can be written, takes an exclusive lock on its ``.lock`` file (released
by the OS when the process ends, however it ends), removes temporaries that killed processes left,
and, unless the run resumes, refuses a folder that already holds a run's checkpoints or results.
Hydra's ``on_run_start`` claims the folder before Hydra writes anything into it (``.hydra/``,
``train.log``); ``train`` claims it again (a no-op in the same process) for runs started from Python.
"""

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError
from transferlab.files import remove_stale_temporaries
from transferlab.layout import CHECKPOINT_SUFFIX, LOCK, RESULTS, checkpoint_dir
from transferlab.ranks import is_global_zero

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder checks still apply
    fcntl = None

log = logging.getLogger(__name__)



@dataclass
class _Claim:
    descriptor: int  # holds the lock while open
    started_before: bool  # the folder had a .lock file: a run was started in it before


_held: dict[str, _Claim] = {}  # real path of a folder this process claimed -> its claim


class RunFolderError(ConfigError):
    """The run folder cannot be used by this run."""


def previous_run(run_dir: str | Path) -> list[Path]:
    """What a run that trained leaves in its folder: checkpoints and ``results.json``."""
    run_dir = Path(run_dir)
    folder = checkpoint_dir(run_dir)
    found = sorted(folder.glob("*" + CHECKPOINT_SUFFIX)) if folder.is_dir() else []
    return found + [path for path in [run_dir / RESULTS] if path.is_file()]


def started_before(run_dir: str | Path) -> bool:
    """Whether a run had claimed this folder before this process did (its ``.lock`` file stays after it ends).

    A run interrupted before its first epoch ended leaves no checkpoint, but this mark.
    """
    claimed = _held.get(_key(run_dir))
    return claimed.started_before if claimed is not None else (Path(run_dir) / LOCK).is_file()


def _key(run_dir: str | Path) -> str:
    return os.path.realpath(Path(run_dir).absolute())


def _open_lock_file(run_dir: Path) -> int:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunFolderError(
            f"Cannot write the run folder {run_dir} ({error.strerror or error}). Every run writes its "
            "checkpoints, logs and results there: give a folder you can write with hydra.run.dir=/path/to/run "
            "(the default is outputs/<date>/<time> under the current directory)."
        ) from error


def _lock(descriptor: int, run_dir: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        owner = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise RunFolderError(
            f"Another run is using the run folder {run_dir} (process {owner}); two runs in one folder would "
            "overwrite each other's checkpoints and logs. Give this run its own folder with hydra.run.dir=..., "
            "or wait for that run to end (to continue it afterwards, add resume=true)."
        ) from error
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)


def _refuse_previous_run(run_dir: Path) -> None:
    found = previous_run(run_dir)
    if found:
        names = ", ".join(str(path.relative_to(run_dir)) for path in found)
        raise RunFolderError(
            f"The run folder {run_dir} already holds a run ({names}). Continue that run with resume=true, "
            "or start a new one in its own folder with hydra.run.dir=... (or delete the old folder). Nothing "
            "was changed."
        )


def claim(run_dir: str | Path, resume: bool) -> bool:
    """Claim ``run_dir`` for this process's run; False if this process holds it already.

    Raises :class:`RunFolderError` when the folder cannot be written, another live run holds it,
    or (without ``resume``) it already holds a run. DDP processes other than rank zero claim nothing.
    """
    run_dir, key = Path(run_dir).absolute(), _key(run_dir)
    if key in _held or not is_global_zero():
        return False
    started = (run_dir / LOCK).is_file()
    descriptor = _open_lock_file(run_dir)
    _lock(descriptor, run_dir)
    try:
        for folder in (run_dir, checkpoint_dir(run_dir)):
            remove_stale_temporaries(folder)
        if not resume:
            _refuse_previous_run(run_dir)
    except BaseException:
        os.close(descriptor)
        raise
    _held[key] = _Claim(descriptor, started)
    return True


def release(run_dir: str | Path) -> None:
    """Let other runs use ``run_dir`` (closing the descriptor drops the lock)."""
    claimed = _held.pop(_key(run_dir), None)
    if claimed is not None:
        os.close(claimed.descriptor)


@contextmanager
def claimed(run_dir: str | Path, resume: bool) -> Iterator[None]:
    """Hold ``run_dir`` for the ``with`` block, unless this process holds it already."""
    newly = claim(run_dir, resume)
    try:
        yield
    finally:
        if newly:
            release(run_dir)


class ClaimRunFolder(HydraCallback):
    """Claims a single run's folder before Hydra writes into it; a refusal ends the command with exit code 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.run_dir = OmegaConf.select(config, "hydra.run.dir")
        try:
            claim(self.run_dir, bool(config.get("resume")))
        except RunFolderError as error:
            print(f"Error: {error}", file=sys.stderr)  # logging is not configured yet
            sys.exit(2)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(self.run_dir)
