"""Training entry point: ``python -m transferlab.train [group=choice ...] [key=value ...]``."""

import logging
import signal
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from transferlab.cli.overrides import exit_on_bad_choices
from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.errors import ConfigError
from transferlab.files import write_json_atomically
from transferlab.layout import FAILURE, RESULTS, TRAINABILITY
from transferlab.model.backbones import check_name, preprocessing_for
from transferlab.model.modes import Mode, get_mode
from transferlab.model.module import TransferClassifier, class_weights
from transferlab.ranks import check_launch, is_global_zero, log_to_console_only
from transferlab.run import folder as run_folder
from transferlab.run.console import quiet_lightning
from transferlab.run.folder import RunFolderError
from transferlab.run.guards import FiniteLoss
from transferlab.run.results import RunSummary
from transferlab.run.resume import AtomicCheckpointIO, RandomState, RestartInterruptedEpoch, checkpoint_to_resume
from transferlab.run.speed import compiled, use_channels_last
from transferlab.run.trainability import Trainability

log = logging.getLogger(__name__)

# conf/, installed as the package transferlab.conf (the repository's conf/ itself in an editable install)
CONFIG_DIR = Path(str(resources.files("transferlab.conf")))


USER_ERRORS = (ConfigError, MisconfigurationException)  # what the user can fix: a message and exit code 2


def build(config: Any, **kwargs: Any) -> Any:
    """``instantiate(config, **kwargs)``, with a user error raised inside it unwrapped from Hydra's
    ``InstantiationException``, so that it ends the run with its own message (a bad weights file while
    the model is built, ``trainer.accelerator=cuda`` on a machine without a GPU)."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, USER_ERRORS):
            raise error.__cause__ from None
        raise


def build_callbacks(cfg: DictConfig, mode: Mode, datamodule: ImageFolderDataModule) -> list[Callback]:
    """The configured callbacks, the mode's freeze callback, the trainability table and the data's feature cache,
    where they apply."""
    callbacks = [build(node) for node in cfg.get("callbacks", {}).values() if node is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    extra = [mode.callback(cfg.mode), Trainability(Path(cfg.paths.output_dir) / TRAINABILITY),  # after the freeze
             datamodule.feature_cache(backbone_trains=mode.backbone_trains(cfg.mode))]
    return callbacks + [callback for callback in extra if callback is not None]


def build_datamodule(cfg: DictConfig, output_dir: Path) -> ImageFolderDataModule:
    """The configured data module, its preprocessing from the weights the backbone starts from."""
    weights = get_mode(cfg.mode.name).initial_weights(cfg.backbone.weights)
    make_datamodule = build(cfg.data, _partial_=True)  # partial: the preprocessing stays an object
    return make_datamodule(preprocessing=preprocessing_for(cfg.backbone.name, weights), seed=cfg.seed,
                           run_dir=str(output_dir))


def build_model(cfg: DictConfig, datamodule: ImageFolderDataModule) -> TransferClassifier:
    """The configured LightningModule, completed with what the data and the machine decide."""
    return build(cfg.model, class_names=datamodule.class_names,
                       class_weights=class_weights(cfg.loss.class_weights, datamodule.class_counts),
                       preprocessing=datamodule.preprocessing.to_dict(),
                       channels_last=use_channels_last(cfg.channels_last, cfg.trainer))


def train(cfg: DictConfig, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return the contents of its ``results.json``.

    ``callbacks`` are added to the configured ones (for notebooks and tests that watch a run).
    """
    output_dir = Path(cfg.paths.output_dir)
    with run_folder.claimed(output_dir, resume=bool(cfg.get("resume"))):
        return _train(cfg, output_dir, callbacks)


def _train(cfg: DictConfig, output_dir: Path, callbacks: list[Callback] | None) -> dict[str, Any]:
    quiet_lightning()
    from transferlab.cli.find_lr import learning_rate  # here: find_lr builds its pieces with this module's functions

    cfg, found = learning_rate(cfg, output_dir)  # optimizer.lr=find: searched first, then training seeds as usual
    pl.seed_everything(cfg.seed, workers=True)
    check_name(cfg.backbone.name)
    mode = get_mode(cfg.mode.name)
    if mode.pretrained and cfg.backbone.weights is None:
        log.warning("mode=%s with backbone.weights=null starts from a random backbone, so it transfers nothing and "
                    "comparing it with other modes says nothing. HINT: start from pretrained weights "
                    "(backbone.weights=DEFAULT, or a weights file) or train from random init with mode=scratch.",
                    mode.name)
    datamodule = build_datamodule(cfg, output_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    summary = RunSummary(output_dir / RESULTS, {"backbone": cfg.backbone.name, "mode": mode.name,
                                                 "weights": model.hparams.weights,
                                                 "lr_find": found.record() if found else None})
    interruption = RestartInterruptedEpoch(output_dir)
    safety = [RandomState(), interruption, FiniteLoss(output_dir)]
    configured = build_callbacks(cfg, mode, datamodule)
    trainer: pl.Trainer = build(cfg.trainer, callbacks=[*configured, *safety, summary, *(callbacks or [])],
                                logger=build(cfg.logger) if cfg.get("logger") else False,
                                      plugins=[AtomicCheckpointIO()])
    check_launch(trainer)
    resume_from = checkpoint_to_resume(output_dir) if cfg.get("resume") else None
    if resume_from is not None:
        log.info("Resuming from %s", resume_from)
    try:
        trainer.fit(compiled(model, cfg.get("compile")), datamodule=datamodule, ckpt_path=resume_from,
                    weights_only=True)
    except SystemExit:
        if interruption.signal == signal.SIGINT:  # Lightning ends a Ctrl-C with exit code 1
            raise KeyboardInterrupt from None
        raise
    results = summary.results
    if trainer.is_global_zero:
        log.info(
            "Run folder %s: best val/acc %.4f at epoch %s of %d, %.1f s (%s train images/s).",
            output_dir, results["best_val_acc"] or float("nan"), results["best_epoch"],
            results["epochs_run"], results["train_time_s"], results["train_images_per_s"],
        )
    return results


def record_failure(output_dir: Path, error: BaseException) -> None:
    """Leave ``failure.json`` in the run folder, so a sweep report can say why this run has no results.

    Under DDP every process fails, and rank zero writes it.
    """
    if not is_global_zero():
        return
    write_json_atomically(output_dir / FAILURE, {
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
    })


def main() -> None:
    """``python -m transferlab.train``: a config-group choice that conf/ lacks (``mode=finetun``) ends with one
    paragraph and exit code 2 before Hydra composes; then Hydra runs ``run``."""
    exit_on_bad_choices("transferlab.train", sys.argv[1:], CONFIG_DIR)
    run()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def run(cfg: DictConfig) -> float | None:
    """Hydra's task function; returns best val/acc for sweepers that optimise it.

    In a multirun, a failed run is recorded and logged and the sweep goes on; a single run
    exits non-zero (2 for bad input, with its message and no traceback).
    """
    if not is_global_zero():  # a DDP process that Lightning (or torchrun, srun) started: rank zero keeps the log
        log_to_console_only(HydraConfig.get().job.name)
    try:
        return train(cfg)["best_val_acc"]
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)  # the shell's convention for "ended by SIGTERM"
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except Exception as error:
        if not isinstance(error, RunFolderError):  # a folder that holds another run gets nothing written into it
            record_failure(Path(cfg.paths.output_dir), error)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("Run failed, the sweep goes on: %s", error, exc_info=not isinstance(error, USER_ERRORS))
            return None
        if isinstance(error, USER_ERRORS):
            log.error("%s", error)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
