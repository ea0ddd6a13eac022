"""The conditional part of the Optuna search space (``hydra/sweeper=search``): settings that only some modes have.

The plugin draws every parameter of ``hydra.sweeper.params`` in every trial, and Hydra refuses an override of a key
the trial's config lacks (``mode.trainable_stages`` with ``mode=finetune``). So a mode's own settings are drawn
here, through the plugin's ``custom_search_space`` hook, once the trial's mode is known: TPE then models them only
over the trials that used them, instead of a meaningless value in every other trial.
"""

import functools
import logging
from typing import TYPE_CHECKING

import torch
from hydra import compose
from omegaconf import DictConfig

from transferlab.model.backbones import BackboneSpec

if TYPE_CHECKING:
    from optuna.trial import Trial

log = logging.getLogger(__name__)

STAGES_SETTING = "trainable_stages"  # mode.trainable_stages: how many of the backbone's top stages train


def mode_settings(cfg: DictConfig, trial: "Trial") -> None:
    """``custom_search_space`` of ``conf/hydra/sweeper/search.yaml``: draws ``mode.trainable_stages`` for a trial
    whose mode has that setting (``partial``), from 1 to the backbone's stage count less one.

    0 stages is ``feature_extract`` and all of them ``finetune``, which the mode choice holds already. ``cfg`` is
    the sweep's config (the backbone, and the mode when the command line fixes it); a ``mode.trainable_stages``
    that the command line fixes or sweeps itself is left as it says.
    """
    key = f"mode.{STAGES_SETTING}"
    if key in trial.params or key in trial.user_attrs:
        return
    if STAGES_SETTING not in mode_keys(str(trial.params.get("mode", cfg.mode.name))):
        return
    count = stage_count(BackboneSpec.from_config(cfg.backbone, weights=None))
    if count < 2:
        log.warning("Backbone %s has %d stage(s): %s is not searched; the trial keeps its configured value.",
                    cfg.backbone.name, count, key)
        return
    trial.suggest_int(key, 1, count - 1)


@functools.cache
def mode_keys(name: str) -> frozenset[str]:
    """The settings in ``conf/mode/<name>.yaml``, as the running Hydra app's config path finds it."""
    return frozenset(compose(overrides=[f"+mode={name}"]).mode)


@functools.cache
def stage_count(spec: BackboneSpec) -> int:
    """How many stages ``mode=partial`` sees in the backbone (``backbone.stages``, or its source's rule)."""
    try:
        with torch.device("meta"):  # the structure without memory or initialisation time
            network = spec.build().network
    except (RuntimeError, NotImplementedError):  # a network that reads its own fresh weights (RegNet)
        network = spec.build().network
    return len(spec.find_stages(network, strict=False))
