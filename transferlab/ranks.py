"""Which process of a multi-process (DDP) run writes the run folder's files: global rank zero only."""

import logging
import os
import re
from pathlib import Path

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only

from transferlab.errors import ConfigError
from transferlab.internals import SubprocessScriptLauncher

# The job name Lightning's launcher gives the processes it starts (hydra.job.name=train_ddp_process_N),
# so Hydra opened a log file of that name for them.
LAUNCHED_JOB_NAME = re.compile(r"_ddp_process_\d+$")


def is_global_zero() -> bool:
    """Whether this process is global rank zero (always, without DDP); right before the Trainer exists too.

    Lightning sets ``rank_zero_only.rank`` when it is imported, from ``RANK`` (torchrun),
    ``LOCAL_RANK`` (the processes its own launcher starts, and torchrun's) or ``SLURM_PROCID``
    (srun), and to the global rank once the strategy is set up. A process on a node other than the
    first (``NODE_RANK``, ``GROUP_RANK``) is never rank zero, even before Lightning knows it.
    """
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))
    return rank_zero_only.rank == 0 and int(node or 0) == 0


def log_to_console_only(job_name: str) -> None:
    """On a rank other than zero: stop writing Hydra's log file, which is rank zero's ``train.log``.

    When Lightning's launcher started this process, Hydra opened a file named after its job
    (``train_ddp_process_1.log``), still empty: it is removed. Messages still reach the console.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, logging.FileHandler):
            continue
        root.removeHandler(handler)
        handler.close()
        path = Path(handler.baseFilename)
        if LAUNCHED_JOB_NAME.search(job_name) and path.stem == job_name and path.is_file() and not path.stat().st_size:
            path.unlink()


def check_launch(trainer: pl.Trainer) -> None:
    """Refuse a multi-process run that Lightning would start itself inside a Hydra multirun (``-m``).

    Lightning's launcher starts the other processes by running this process's command line again,
    which in a multirun is the whole sweep: they would run every job of it, each in a sweep folder
    of its own. Processes that srun or torchrun start (``creates_processes_externally``) are fine.
    """
    launcher = trainer.strategy.launcher
    if not (isinstance(launcher, SubprocessScriptLauncher) and trainer.num_devices > 1
            and not launcher.cluster_environment.creates_processes_externally):
        return
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"trainer.devices={trainer.num_devices} with trainer=ddp cannot run inside a multirun (-m): "
            "Lightning starts "
            "the other processes by running the whole sweep command again. Run each multi-device run as its own "
            "command (a shell loop over the settings), or sweep on SLURM with one task per device "
            "(hydra/launcher=slurm_gpu hydra.launcher.tasks_per_node=N hydra.launcher.gpus_per_node=N), where srun "
            "starts the processes."
        )
