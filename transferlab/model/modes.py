"""Transfer modes, one spec each (where the backbone starts, when each of its stages trains), and the freeze callback.

Code asks a mode's spec (``get_mode(name).backbone_trains(cfg.mode)``), never compares mode names. A mode's
``Schedule`` says when each backbone stage (``transferlab.model.stages``) starts training, counted from the top;
``plan_stages`` adds each stage's optimizer group and learning rate. A frozen stage is put in eval mode at the start
of every training epoch, so BatchNorm normalises with, and never updates, its running statistics (and
dropout/stochastic depth stay off). ``BaseFinetuning.freeze(train_bn=False)`` alone is not enough: it stops
BatchNorm tracking statistics but, in train mode, BatchNorm still normalises with batch statistics, and every
``model.train()`` call undoes a child's ``eval()``.

The optimizer owns a group for every stage that will ever train from the start (see
``TransferClassifier.param_groups``), empty while it is frozen: one ``backbone`` group when all stages train alike,
else one per stage (``backbone.layer4``). Unfreezing fills the group, so learning-rate schedulers that were built
with it (StepLR, OneCycle) keep scheduling it, and a resumed run rebuilds it before the optimizer state is loaded.
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from transferlab.errors import ConfigError
from transferlab.model.stages import Stage

log = logging.getLogger(__name__)

BACKBONE_GROUP = "backbone"  # the one backbone group when every stage trains alike; else backbone.<stage>
UNFREEZE = ("all", "stagewise")


@dataclass(frozen=True)
class Schedule:
    """When each backbone stage trains, counted from the top (k = 0: the stage whose output the head reads)."""

    trainable: int | None = None  # top stages that train from the start; None: every stage
    unfreeze_at_epoch: int | None = None  # when the other stages start to unfreeze; None: never
    unfreeze_every: int | None = None  # None: all at that epoch; n: one more stage, from the top, every n epochs

    def start_epoch(self, k: int) -> int | None:
        """The epoch stage ``k`` (from the top) starts training: 0 from the start, None never."""
        if self.trainable is None or k < self.trainable:
            return 0
        if self.unfreeze_at_epoch is None:
            return None
        return self.unfreeze_at_epoch + (k - self.trainable) * (self.unfreeze_every or 0)

    @property
    def per_stage(self) -> bool:
        """Whether stages differ in when they train (an optimizer group per stage), not just frozen or not."""
        return self.unfreeze_every is not None or (self.trainable or 0) > 0


@dataclass(frozen=True)
class PlannedStage:
    """A stage with its part in the run: when it starts training, its optimizer group and learning-rate scale."""

    stage: Stage
    start_epoch: int | None  # 0: from the start; None: never
    group: str | None  # None: it never trains
    lr_scale: float  # of optimizer.lr: mode.backbone_lr_ratio x optimizer.layer_decay ** (its place from the top)


def plan_stages(stages: list[Stage], schedule: Schedule, backbone_lr_ratio: float,
                layer_decay: float = 1.0) -> list[PlannedStage]:
    """Each stage (input to output) with when it trains, its group and rate; ConfigError for impossible settings."""
    if not 0 < layer_decay <= 1:
        raise ConfigError(
            f"optimizer.layer_decay={layer_decay} is not in (0, 1]: stage k from the top trains at optimizer.lr x "
            "mode.backbone_lr_ratio x layer_decay^k. Set it to 1.0 (every stage at one rate) or e.g. 0.75."
        )
    if schedule.trainable is not None and schedule.trainable > len(stages):
        raise ConfigError(
            f"mode.trainable_stages={schedule.trainable} is more than the backbone's {len(stages)} stages "
            f"({', '.join(stage.name for stage in stages)}). Set it between 0 (feature extraction) and "
            f"{len(stages)} (the whole backbone), or set backbone.stages to split the backbone differently."
        )
    per_stage = schedule.per_stage or layer_decay != 1
    planned = []
    for k, stage in enumerate(reversed(stages)):
        start = schedule.start_epoch(k)
        group = None if start is None else f"{BACKBONE_GROUP}.{stage.name}" if per_stage else BACKBONE_GROUP
        planned.append(PlannedStage(stage, start, group, backbone_lr_ratio * layer_decay ** k))
    return planned[::-1]


class FreezeBackbone(BaseFinetuning):
    """Keeps the backbone stages that do not train yet frozen, weights and BatchNorm buffers bit-identical, and
    unfreezes each at its epoch; the module's ``stage_plan`` says which and when.

    A stage it unfreezes trains at the rate of its optimizer group, which existed (empty) from the start.

    Example::

        trainer = Trainer(callbacks=[FreezeBackbone()])  # with a TransferClassifier in gradual or partial mode
    """

    def __init__(self) -> None:
        super().__init__()
        self.unfrozen: list[str] = []  # the stages this callback made trainable, in order (kept in checkpoints)
        self._all_unfrozen = False  # a checkpoint of the single-switch callback said "unfrozen"

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        for planned in pl_module.stage_plan:
            if planned.start_epoch != 0:
                self.freeze(planned.stage.modules(pl_module.backbone), train_bn=False)
                for parameter in planned.stage.parameters(pl_module.backbone):
                    parameter.requires_grad = False

    @override
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        due = [planned for planned in pl_module.stage_plan if planned.start_epoch not in (None, 0)
               and planned.start_epoch <= epoch and planned.stage.name not in self.unfrozen]
        if due:
            self.unfreeze(pl_module, optimizer, due)
            log.info("Epoch %d: backbone stage(s) %s unfrozen.", epoch, ", ".join(p.stage.name for p in due))

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
        for planned in self._frozen(pl_module):
            for module in planned.stage.modules(pl_module.backbone):
                module.eval()
        _sync_containers(pl_module.backbone)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Parameter groups are fixed at construction: on resume after an unfreeze epoch, only refill the groups.

        This runs before Lightning loads the optimizer state, which then finds the groups it saved.
        """
        if self._all_unfrozen:
            self.unfrozen = [p.stage.name for p in pl_module.stage_plan if p.start_epoch not in (None, 0)]
        again = [planned for planned in pl_module.stage_plan if planned.stage.name in self.unfrozen]
        for optimizer in trainer.optimizers if again else []:
            self.unfreeze(pl_module, optimizer, again)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Average the gradients of the stages unfrozen here over the DDP processes: DDP itself never does.

        DDP all-reduces the gradients of the parameters that required grad when it wrapped the model,
        and these stages were frozen then (``setup`` freezes them, Lightning wraps the model after;
        Lightning issue 20340). Without this, each process would step them with the gradient
        of its own share of the batch, and their copies would drift apart (tests/test_ddp.py).
        """
        if not self.unfrozen or trainer.world_size == 1:
            return
        grads = [p.grad for planned in pl_module.stage_plan if planned.stage.name in self.unfrozen
                 for p in planned.stage.parameters(pl_module.backbone) if p.grad is not None]
        if not grads:
            return
        averaged = trainer.strategy.reduce(torch.cat([grad.flatten() for grad in grads]), reduce_op="mean")
        for grad, mean in zip(grads, averaged.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(mean.view_as(grad))

    def unfreeze(self, pl_module: pl.LightningModule, optimizer: Optimizer, stages: list[PlannedStage]) -> None:
        """Make ``stages`` trainable and hand their parameters to their optimizer groups."""
        for planned in stages:
            self.make_trainable(planned.stage.modules(pl_module.backbone))
            for parameter in planned.stage.parameters(pl_module.backbone):
                parameter.requires_grad = True
            for module in planned.stage.modules(pl_module.backbone):
                module.train()
            if planned.stage.name not in self.unfrozen:
                self.unfrozen.append(planned.stage.name)
        _sync_containers(pl_module.backbone)
        refilled = {group["name"]: group["params"] for group in pl_module.param_groups()}
        for group in optimizer.param_groups:
            if group.get("name") in {planned.group for planned in stages}:
                group["params"] = refilled[group["name"]]

    def _frozen(self, pl_module: pl.LightningModule) -> list[PlannedStage]:
        return [planned for planned in pl_module.stage_plan
                if planned.start_epoch != 0 and planned.stage.name not in self.unfrozen]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"unfrozen": list(self.unfrozen)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.unfrozen = list(state_dict.get("unfrozen", []))
        self._all_unfrozen = "unfrozen" not in state_dict and not state_dict.get("frozen", True)


def _sync_containers(backbone: nn.Module) -> None:
    """A module that holds stages trains iff one of its children does: in eval when all are frozen (Inception's
    root then skips its aux head), back in training when one unfreezes."""
    for module in reversed(list(backbone.modules())):  # descendants first
        children = list(module.children())
        if children:
            module.training = any(child.training for child in children)


def _count(settings: Mapping[str, Any], key: str, smallest: int, fix: str) -> int:
    """``mode.<key>``, an integer of at least ``smallest``, or a ConfigError naming it."""
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        raise ConfigError(f"mode.{key}={value!r} must be an integer of at least {smallest}. {fix}")
    return value


def partial_schedule(settings: Mapping[str, Any]) -> Schedule:
    """``partial``: the top ``mode.trainable_stages`` stages train, the others stay frozen."""
    return Schedule(trainable=_count(settings, "trainable_stages", 0, "Set mode.trainable_stages=K to train the "
                                     "backbone's last K stages (0: feature extraction; all of them: finetune)."))


def gradual_schedule(settings: Mapping[str, Any]) -> Schedule:
    """``gradual``: the head alone, then from ``mode.unfreeze_at_epoch`` all stages, or one more every
    ``mode.unfreeze_every`` epochs (``mode.unfreeze=stagewise``)."""
    unfreeze = settings.get("unfreeze", "all")
    if unfreeze not in UNFREEZE:
        raise ConfigError(f"mode.unfreeze={unfreeze!r} is not one of {', '.join(UNFREEZE)}. Set mode.unfreeze=all "
                          "(the whole backbone at mode.unfreeze_at_epoch) or mode.unfreeze=stagewise (one more "
                          "stage from the top every mode.unfreeze_every epochs).")
    # a checkpoint from before the stage settings holds no unfreeze_at_epoch: only that its backbone trains matters
    at = _count({"unfreeze_at_epoch": 0, **settings}, "unfreeze_at_epoch", 0, "Set the epoch the backbone starts "
                "to unfreeze (0: at once).")
    every = (_count({"unfreeze_every": 1, **settings}, "unfreeze_every", 1, "Set the number of epochs between "
                    "two stages' unfreezing.") if unfreeze == "stagewise" else None)
    return Schedule(trainable=0, unfreeze_at_epoch=at, unfreeze_every=every)


@dataclass(frozen=True)
class Mode:
    """What a transfer mode means: where the backbone starts, and when each of its stages trains."""

    name: str
    pretrained: bool  # starts from backbone.weights; False: random initialisation
    make_schedule: Callable[[Mapping[str, Any]], Schedule] = lambda settings: Schedule()  # from the mode's config

    def initial_weights(self, weights: str | None) -> str | None:
        """The weights the backbone starts from: ``weights``, or none when the mode starts from random init."""
        return weights if self.pretrained else None

    def schedule(self, settings: Mapping[str, Any] | None) -> Schedule:
        """When each stage trains, from the mode's config (``conf/mode/NAME.yaml``, ``cfg.mode``)."""
        return self.make_schedule(settings or {})

    def backbone_trains(self, settings: Mapping[str, Any] | None) -> bool:
        """Whether any of the backbone trains at some point of the run (the top stage is always first)."""
        return self.schedule(settings).start_epoch(0) is not None

    def callback(self, settings: Mapping[str, Any] | None) -> Callback | None:
        """The callback that freezes (and maybe unfreezes) backbone stages; None if every stage always trains."""
        return FreezeBackbone() if self.schedule(settings).trainable is not None else None


MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Make ``mode`` available as ``mode=NAME`` (its config file is ``conf/mode/NAME.yaml``)."""
    MODES[mode.name] = mode
    return mode


def get_mode(name: str) -> Mode:
    """The registered mode called ``name``, or a ConfigError listing the choices."""
    if name not in MODES:
        raise ConfigError(f"mode={name!r} is not a transfer mode. Choose one of: {', '.join(MODES)}.")
    return MODES[name]


register_mode(Mode("scratch", pretrained=False))
register_mode(Mode("finetune", pretrained=True))
register_mode(Mode("feature_extract", pretrained=True, make_schedule=lambda settings: Schedule(trainable=0)))
register_mode(Mode("gradual", pretrained=True, make_schedule=gradual_schedule))
register_mode(Mode("partial", pretrained=True, make_schedule=partial_schedule))
