"""Training entry point: ``python -m transferlab.train [group=choice ...] [key=value ...]``."""

import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from transferlab.cli.build import USER_ERRORS, build, build_callbacks, build_datamodule, build_model
from transferlab.cli.find_lr import learning_rate
from transferlab.cli.overrides import CONFIG_DIR, exit_on_bad_choices
from transferlab.files import write_json_atomically
from transferlab.layout import FAILURE, RESULTS
from transferlab.model.backbones import BackboneSpec
from transferlab.model.modes import get_mode
from transferlab.ranks import check_launch, is_global_zero, log_to_console_only
from transferlab.run import folder as run_folder
from transferlab.run.console import quiet_lightning
from transferlab.run.folder import RunFolderError
from transferlab.run.guards import FiniteLoss
from transferlab.run.results import RunSummary
from transferlab.run.resume import AtomicCheckpointIO, RandomState, RestartInterruptedEpoch, checkpoint_to_resume
from transferlab.run.speed import compiled

log = logging.getLogger(__name__)


def train(cfg: DictConfig, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train one model as ``cfg`` says and return the contents of its ``results.json``.

    ``callbacks`` are added to the configured ones (for notebooks and tests that watch a run).
    """
    output_dir = Path(cfg.paths.output_dir)
    with run_folder.claimed(output_dir, resume=bool(cfg.get("resume"))):
        return _train(cfg, output_dir, callbacks)


def _train(cfg: DictConfig, output_dir: Path, callbacks: list[Callback] | None) -> dict[str, Any]:
    quiet_lightning()

    cfg, found = learning_rate(cfg, output_dir)  # optimizer.lr=find: searched first, then training seeds as usual
    pl.seed_everything(cfg.seed, workers=True)
    BackboneSpec.from_config(cfg.backbone).check()
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
