"""Transfer modes, one spec each (where the backbone starts, whether it trains), and the freeze callback.

Code asks a mode's spec (``get_mode(name).backbone_trains``), never compares mode names. A frozen
backbone is put in eval mode at the start of every training epoch, so BatchNorm normalises with,
and never updates, its running statistics (and dropout/stochastic depth stay off).
``BaseFinetuning.freeze(train_bn=False)`` alone is not enough: it stops BatchNorm tracking
statistics but, in train mode, BatchNorm still normalises with batch statistics, and every
``model.train()`` call undoes a child's ``eval()``.

The optimizer owns a ``backbone`` parameter group from the start whenever the backbone will ever
train (see ``TransferClassifier.param_groups``), empty while it is frozen. Unfreezing fills that
group, so learning-rate schedulers that were built with it (StepLR, OneCycle) keep scheduling it,
and a resumed run rebuilds it before the optimizer state is loaded.
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from torch.optim import Optimizer
from typing_extensions import override

from transferlab.errors import ConfigError

log = logging.getLogger(__name__)

BACKBONE_GROUP = "backbone"


class FreezeBackbone(BaseFinetuning):
    """Keeps the backbone frozen, weights and BatchNorm buffers bit-identical, until ``unfreeze_at_epoch``.

    ``unfreeze_at_epoch=None`` never unfreezes (``feature_extract``). From the unfreeze epoch on,
    the whole backbone trains at the rate of the optimizer's ``backbone`` group (``gradual``).

    Example::

        trainer = Trainer(callbacks=[FreezeBackbone(unfreeze_at_epoch=5)])
    """

    def __init__(self, unfreeze_at_epoch: int | None = None) -> None:
        super().__init__()
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ConfigError(f"mode.unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}.")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.frozen = True

    @override
    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    @override
    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if self.frozen and self.unfreeze_at_epoch is not None and epoch >= self.unfreeze_at_epoch:
            self.unfreeze(pl_module, optimizer)
            log.info("Epoch %d: backbone unfrozen.", epoch)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
        if self.frozen:
            pl_module.backbone.eval()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Parameter groups are fixed at construction: on resume after the unfreeze epoch, only refill the group.

        This runs before Lightning loads the optimizer state, which then finds the group it saved.
        """
        if not self.frozen:
            for optimizer in trainer.optimizers:
                self.unfreeze(pl_module, optimizer)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Average the unfrozen backbone's gradients over the DDP processes: DDP itself never does.

        DDP all-reduces the gradients of the parameters that required grad when it wrapped the model,
        and the backbone was frozen then (``setup`` freezes it, Lightning wraps the model after;
        Lightning issue 20340). Without this, each process would step its backbone with the gradient
        of its own share of the batch, and their copies would drift apart (tests/test_ddp.py).
        """
        if self.frozen or trainer.world_size == 1:
            return
        grads = [p.grad for p in pl_module.backbone.parameters() if p.grad is not None]
        if not grads:
            return
        averaged = trainer.strategy.reduce(torch.cat([grad.flatten() for grad in grads]), reduce_op="mean")
        for grad, mean in zip(grads, averaged.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(mean.view_as(grad))

    def unfreeze(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Make the backbone trainable and hand its parameters to the optimizer's backbone group."""
        self.make_trainable(pl_module.backbone)
        pl_module.backbone.train()
        group = next(g for g in optimizer.param_groups if g.get("name") == BACKBONE_GROUP)
        group["params"] = [p for p in pl_module.backbone.parameters() if p.requires_grad]
        self.frozen = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frozen = state_dict.get("frozen", True)


@dataclass(frozen=True)
class Mode:
    """What a transfer mode means: where the backbone starts, whether it ever trains, and its callback."""

    name: str
    pretrained: bool  # starts from backbone.weights; False: random initialisation
    backbone_trains: bool  # at some point of the run
    make_callback: Callable[[Mapping[str, Any]], Callback] | None = None  # from the mode's config

    def initial_weights(self, weights: str | None) -> str | None:
        """The weights the backbone starts from: ``weights``, or none when the mode starts from random init."""
        return weights if self.pretrained else None

    def callback(self, settings: Mapping[str, Any]) -> Callback | None:
        """The callback that freezes (and maybe unfreezes) the backbone, from the mode's config; None if it
        never freezes."""
        return self.make_callback(settings) if self.make_callback else None


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


register_mode(Mode("scratch", pretrained=False, backbone_trains=True))
register_mode(Mode("finetune", pretrained=True, backbone_trains=True))
register_mode(Mode("feature_extract", pretrained=True, backbone_trains=False,
                   make_callback=lambda settings: FreezeBackbone()))
register_mode(Mode("gradual", pretrained=True, backbone_trains=True,
                   make_callback=lambda settings: FreezeBackbone(settings["unfreeze_at_epoch"])))
