"""Transfer modes as Lightning finetuning callbacks: freeze the backbone, and unfreeze it later.

A frozen backbone is put in eval mode at the start of every training epoch, so BatchNorm
normalises with, and never updates, its running statistics (and dropout/stochastic depth stay
off). ``BaseFinetuning.freeze(train_bn=False)`` alone is not enough: it stops BatchNorm tracking
statistics but, in train mode, BatchNorm still normalises with batch statistics, and every
``model.train()`` call undoes a child's ``eval()``.

The optimizer owns a ``backbone`` parameter group from the start (see ``TransferClassifier``),
empty while the backbone is frozen. Unfreezing fills that group, so learning-rate schedulers
that were built with it (StepLR, OneCycle) keep scheduling it, and a resumed run rebuilds it
before the optimizer state is loaded.
"""

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer

log = logging.getLogger(__name__)

BACKBONE_GROUP = "backbone"


class FreezeBackbone(BaseFinetuning):
    """``feature_extract``: the backbone never trains; its weights and BatchNorm buffers stay bit-identical."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = True

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """The backbone stays frozen."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
        if self.frozen:
            pl_module.backbone.eval()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Parameter groups are fixed at construction, so there is nothing to remap on resume."""


class GradualUnfreeze(FreezeBackbone):
    """``gradual``: feature extraction until ``unfreeze_at_epoch``, then the whole network trains.

    The backbone then trains at the rate of the optimizer's ``backbone`` group, which the module
    sets to ``lr x backbone_lr_ratio``.
    """

    def __init__(self, unfreeze_at_epoch: int) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise ValueError(f"mode.unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}.")
        self.unfreeze_at_epoch = unfreeze_at_epoch

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if self.frozen and epoch >= self.unfreeze_at_epoch:
            self.unfreeze(pl_module, optimizer)
            log.info("Epoch %d: backbone unfrozen.", epoch)

    def unfreeze(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Make the backbone trainable and hand its parameters to the optimizer's backbone group."""
        self.make_trainable(pl_module.backbone)
        pl_module.backbone.train()
        group = next(g for g in optimizer.param_groups if g.get("name") == BACKBONE_GROUP)
        group["params"] = [p for p in pl_module.backbone.parameters() if p.requires_grad]
        self.frozen = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """On resume after the unfreeze epoch, unfreeze before Lightning loads the optimizer state."""
        if not self.frozen:
            for optimizer in trainer.optimizers:
                self.unfreeze(pl_module, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frozen = state_dict["frozen"]
