"""Losing no work: atomic checkpoint files, a checkpoint on SIGTERM/Ctrl-C, and exact resumption."""

import logging
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


class CheckpointOnInterrupt(Callback):
    """On SIGTERM (cluster pre-emption) or Ctrl-C, writes ``last.ckpt`` before the process exits.

    Unlike Lightning's ``OnExceptionCheckpoint``, other exceptions write nothing: a run stopped for
    a NaN loss must keep its last good checkpoint.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = last_checkpoint(run_dir)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        trainer.save_checkpoint(self.path)
        log.warning("Interrupted (%s): saved %s; continue with resume=true.", type(exception).__name__, self.path)


def checkpoint_to_resume(run_dir: str | Path) -> Path:
    """The ``last.ckpt`` a ``resume=true`` run continues from, checked to load safely, or a clear error."""
    path = last_checkpoint(run_dir)
    if not path.is_file():
        raise ConfigError(
            f"resume=true, but there is no {path}. Resume in the folder of the interrupted run: give its "
            f"hydra.run.dir=... (this run's folder is {run_dir}), or drop resume=true to start afresh."
        )
    load_safely(path, "resume=true: the checkpoint", "Delete it to resume from an older checkpoint copied to that "
                "name, or drop resume=true to start afresh.")
    return path
