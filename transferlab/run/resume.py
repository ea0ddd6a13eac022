"""Losing no work: atomic checkpoint files, exact resumption after kill -9, SIGTERM or Ctrl-C."""

import logging
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from transferlab.errors import ConfigError
from transferlab.files import atomic_path
from transferlab.internals import collect_rng_states, set_rng_states
from transferlab.layout import last_checkpoint
from transferlab.model.loading import load_safely
from transferlab.run.folder import previous_run, started_before

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place: a crash never leaves half a file.

    Lightning's own write goes through an fsspec transaction whose local temporary file is in the
    system's temporary folder; ``shutil.move`` onto another file system (a tmpfs /tmp, a network
    run folder) is a copy, which a crash can cut short, and a killed process leaves the temporary
    (the size of a checkpoint) in /tmp. A temporary beside the target makes the rename atomic.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)


class RandomState(Callback):
    """Saves the global RNG states with every checkpoint and restores them when training resumes.

    With them a resumed run shuffles and augments exactly as the uninterrupted run would have.
    Stored as tensors and tuples, so checkpoints still load with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        states = collect_rng_states(include_cuda=torch.cuda.is_available())
        name, keys, position, has_gauss, cached = states["numpy"]
        states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore at once: Lightning loads callback states before anything draws from the generators.

        (``configure_optimizers`` can already start the training data iterator, e.g. when OneCycle
        asks for ``trainer.estimated_stepping_batches``, so a later hook would be too late.)
        """
        states = dict(state_dict)
        name, keys, position, has_gauss, cached = states["numpy"]
        states["numpy"] = (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
        if not torch.cuda.is_available():
            states.pop("torch.cuda", None)
        set_rng_states(states)


class RestartInterruptedEpoch(Callback):
    """On SIGTERM (cluster pre-emption) or Ctrl-C, leaves ``last.ckpt`` at the end of the last whole epoch.

    A checkpoint written mid-epoch cannot be resumed exactly: the loader's position and its workers'
    random streams are not in it. So the interrupted epoch runs again from its start on ``resume=true``,
    and the resumed run ends bit-identical to an uninterrupted one; at most one epoch's work is redone.
    Which signal ended the run is kept in ``signal`` for the exit code.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = last_checkpoint(run_dir)
        self.signal: signal.Signals | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.signal = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.signal = signal.SIGTERM
        else:
            return
        start = (f"from the start of epoch {trainer.current_epoch} ({self.path} holds the end of the epoch before)"
                 if self.path.is_file() else "from the beginning (no epoch had ended)")
        log.warning("Interrupted by %s in epoch %d: resume=true runs it again %s, so that it ends as an "
                    "uninterrupted run would.", self.signal.name, trainer.current_epoch, start)


def checkpoint_to_resume(run_dir: str | Path) -> Path | None:
    """The ``last.ckpt`` a ``resume=true`` run continues from, checked to load safely, or a clear error.

    None when a run was started in ``run_dir`` but interrupted before its first epoch ended: the run
    starts from the beginning, as the interrupted one did.
    """
    path = last_checkpoint(run_dir)
    if not path.is_file():
        if started_before(run_dir) and not previous_run(run_dir):
            log.warning("resume=true: the run in %s ended before its first epoch did; starting it from the "
                        "beginning.", run_dir)
            return None
        raise ConfigError(
            f"resume=true, but there is no {path}. Resume in the folder of the interrupted run: give its "
            f"hydra.run.dir=... (this run's folder is {run_dir}), or drop resume=true to start afresh."
        )
    load_safely(path, "resume=true: the checkpoint", "Delete it to resume from an older checkpoint copied to that "
                "name, or drop resume=true to start afresh.")
    return path
