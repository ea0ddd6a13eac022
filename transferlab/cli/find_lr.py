"""Learning-rate finder: ``python -m transferlab.find_lr [group=choice ...] [key=value ...]``.

Takes the training config and overrides (``conf/find_lr.yaml`` is ``conf/train.yaml`` with its own run folder,
``outputs/lr_find/DATE/TIME``), builds the data, model and trainer as training does, and runs Lightning's
learning-rate range test on them (``transferlab.run.lr_finder``; settings ``lr_find.*``). It writes
``lr_find.png`` and ``lr_find.json``, and prints the suggestion with the ``python -m transferlab.train`` command
that uses it. ``optimizer.lr=find`` in training runs the same search first (:func:`learning_rate`).
"""

import copy
import logging
import shlex
import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from transferlab.cli.build import USER_ERRORS, build, build_callbacks, build_datamodule, build_model
from transferlab.cli.overrides import CONFIG_DIR, exit_on_bad_choices
from transferlab.errors import ConfigError
from transferlab.layout import LR_FIND_JSON, LR_FIND_PNG, last_checkpoint
from transferlab.model.backbones import BackboneSpec
from transferlab.model.modes import get_mode
from transferlab.ranks import check_launch
from transferlab.run.advice import hydra_override
from transferlab.run.console import quiet_lightning
from transferlab.run.lr_finder import FIND, FrozenStagesInEval, LrFinding, LrFindSettings, search
from transferlab.run.resume import AtomicCheckpointIO

log = logging.getLogger(__name__)

OWN_KEYS = ("lr_find", "hydra", "optimizer.lr")  # overrides the train command leaves out (it sets optimizer.lr)


def with_lr(cfg: DictConfig, lr: float) -> DictConfig:
    """A copy of ``cfg`` with ``optimizer.lr=lr``: the model (``optimizer: ${optimizer}``) and its checkpoint's
    hyper-parameters get the number."""
    cfg = copy.deepcopy(cfg)
    cfg.optimizer.lr = lr
    return cfg


def find_lr(cfg: DictConfig, output_dir: Path | None = None) -> LrFinding:
    """The range test for the training ``cfg`` describes; ``lr_find.png`` and ``lr_find.json`` go to ``output_dir``
    (default ``paths.output_dir``). Seeded by ``seed``; the search trains nothing that is kept."""
    quiet_lightning()
    output_dir = Path(output_dir or cfg.paths.output_dir)
    settings = LrFindSettings.from_config(cfg.get("lr_find"))
    cfg = with_lr(cfg, settings.min_lr)  # any number: the finder sets every group's rate itself
    pl.seed_everything(cfg.seed, workers=True)
    BackboneSpec.from_config(cfg.backbone).check()
    mode = get_mode(cfg.mode.name)
    datamodule = build_datamodule(cfg, output_dir)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    # no epoch limit: the search takes num_training steps, however many epochs of a small data set that is
    trainer: pl.Trainer = build(cfg.trainer, callbacks=[*build_callbacks(cfg, mode, datamodule), FrozenStagesInEval()],
                                logger=False, max_epochs=-1, max_steps=settings.num_training,
                                plugins=[AtomicCheckpointIO()])
    check_launch(trainer)
    return search(trainer, model, datamodule, settings, output_dir)


def learning_rate(cfg: DictConfig, output_dir: Path) -> tuple[DictConfig, LrFinding | None]:
    """``cfg`` with a number for ``optimizer.lr``, and the finding when it was ``find``.

    ``optimizer.lr=find`` runs :func:`find_lr` into the run folder ``output_dir``; a ``resume=true`` run takes the
    suggestion its first start recorded there (``lr_find.json``) instead of searching again.
    """
    lr = cfg.optimizer.lr
    if lr != FIND:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise ConfigError(f"optimizer.lr={lr!r} is neither a number nor {FIND!r}. Give a rate "
                              f"(optimizer.lr=0.001) or optimizer.lr={FIND} to train at the finder's suggestion.")
        return cfg, None
    recorded = output_dir / LR_FIND_JSON
    if cfg.get("resume") and recorded.is_file():
        finding = LrFinding.read(recorded)
        log.info("resume=true: optimizer.lr=%s is the rate found when the run started (%s).", finding.suggestion,
                 recorded)
    elif cfg.get("resume") and last_checkpoint(output_dir).is_file():
        raise ConfigError(f"resume=true with optimizer.lr={FIND}, but {recorded} is missing, so the rate this run "
                          "trained at is unknown. Give it as optimizer.lr=<rate> (the checkpoint's hyper-parameters "
                          "hold it) to resume.")
    else:
        finding = find_lr(cfg, output_dir)
    return with_lr(cfg, finding.suggestion), finding


def train_command(overrides: list[str], lr: float) -> str:
    """``python -m transferlab.train`` with the finder's overrides (its own and ``hydra.*`` left out) and ``lr``."""
    key = lambda override: override.split("=", 1)[0].lstrip("+~")
    shared = [override for override in overrides
              if not any(key(override) == own or key(override).startswith(own + ".") for own in OWN_KEYS)]
    return " ".join(["python -m transferlab.train", *map(shlex.quote, shared), hydra_override("optimizer.lr", lr)])


def main() -> None:
    """``python -m transferlab.find_lr``: bad config-group choices end with exit code 2 before Hydra composes."""
    exit_on_bad_choices("transferlab.find_lr", sys.argv[1:], CONFIG_DIR)
    run()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="find_lr")
def run(cfg: DictConfig) -> float | None:
    """Hydra's task function: search, print the suggestion and the train command; returns the suggestion."""
    try:
        finding = find_lr(cfg)
    except USER_ERRORS as error:
        log.error("%s", error)
        sys.exit(2)
    output_dir = Path(cfg.paths.output_dir)
    command = train_command(list(HydraConfig.get().overrides.task), finding.suggestion)
    print(f"Suggested learning rate: optimizer.lr={finding.suggestion} (where the training loss fell fastest, "
          f"searched from {finding.settings.min_lr} to {finding.settings.max_lr}; each parameter group trains at it "
          f"x its scale)\nCurve: {output_dir / LR_FIND_PNG}\nTrain with it:\n  {command}", flush=True)
    log.info("Train with it: %s", command)
    return finding.suggestion


if __name__ == "__main__":
    main()
