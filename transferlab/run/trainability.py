"""``trainability.md``: at fit start, what trains: every backbone stage and the head, with its parameter count,
trainable or frozen, BatchNorm mode, optimizer group, learning rate and the epoch it starts training."""

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from transferlab.files import write_text_atomically

log = logging.getLogger(__name__)

COLUMNS = ["stage", "parameters", "at fit start", "BatchNorm", "optimizer group", "learning rate", "trains from epoch"]
NOTE = ("Stages run from input to output: the first holds the stem, the last what follows it. A stage's rate is "
        "optimizer.lr x mode.backbone_lr_ratio x optimizer.layer_decay^k, k counted from the top stage (0), before "
        "the scheduler; frozen stages run in eval mode, so their BatchNorm statistics stay as they are.")


def trainability_rows(pl_module: pl.LightningModule) -> list[list[str]]:
    """One row per backbone stage (``pl_module.stage_plan``, input to output), then the head, as ``COLUMNS`` says."""
    base_lr = (pl_module.hparams.get("optimizer") or {}).get("lr")
    rate = lambda scale: f"{base_lr * scale:.4g} (lr x {scale:.4g})" if base_lr is not None else f"lr x {scale:.4g}"
    rows = []
    for planned in pl_module.stage_plan:
        parameters = planned.stage.parameters(pl_module.backbone)
        trainable = any(p.requires_grad for p in parameters)
        batchnorm = ("train: batch statistics" if trainable else "eval: running statistics"
                     ) if planned.stage.has_batchnorm(pl_module.backbone) else "none"
        start = {None: "never", 0: "0 (from the start)"}.get(planned.start_epoch, str(planned.start_epoch))
        rows.append([planned.stage.name, f"{sum(p.numel() for p in parameters):,}",
                     "trainable" if trainable else "frozen", batchnorm, planned.group or "-",
                     rate(planned.lr_scale) if planned.group else "-", start])
    head = list(pl_module.head.parameters())
    rows.append(["head", f"{sum(p.numel() for p in head):,}", "trainable" if any(p.requires_grad for p in head)
                 else "frozen", "none", "head", rate(1.0), "0 (from the start)"])
    return rows


def trainability_table(pl_module: pl.LightningModule) -> str:
    """The rows of :func:`trainability_rows` as a Markdown table, with the note on how to read them."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in trainability_rows(pl_module)]
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


class Trainability(Callback):
    """Logs the trainability table at fit start and writes it to ``path`` (rank zero).

    Put it after the mode's freeze callback: on resume, that one unfreezes the stages unfrozen before, at fit start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = trainability_table(pl_module)
        log.info("What trains:\n%s", table)
        write_text_atomically(self.path, f"# What trains ({pl_module.hparams.backbone}, "
                                         f"mode={pl_module.hparams.mode})\n\n{table}")
