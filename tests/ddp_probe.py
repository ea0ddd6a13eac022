"""A callback that records what each DDP process trains on, for test_ddp.py (loaded by the CLI via +callbacks.X)."""

import json
from pathlib import Path

import lightning.pytorch as pl


class RecordSamplerOrder(pl.Callback):
    """Writes ``folder/rank<R>_epoch<E>.json``: the training-set indices this process's sampler yields in epoch E.

    Recorded at the start of each epoch, after Lightning has called ``set_epoch``; the sampler's order
    depends only on (seed, epoch), so listing it once more changes nothing. ``folder`` lies outside
    the run folder.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = trainer.train_dataloader.sampler
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "sampler": type(sampler).__name__, "indices": list(sampler)}
        (self.folder / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json").write_text(json.dumps(record))
