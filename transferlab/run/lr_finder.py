"""The learning-rate range test: Lightning's ``Tuner.lr_find`` on a trainer built as for training, its curve and
suggestion written to ``lr_find.png`` and ``lr_find.json``.

The test trains for ``num_training`` batches while the rate grows from ``min_lr`` to ``max_lr`` (exponentially by
default) and records the smoothed loss; the suggestion is the rate where the loss falls fastest (Lightning's rule).
The model, optimizer and random generators are restored afterwards, so the search changes nothing it is run on.
"""

import json
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.tuner import Tuner
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from typing_extensions import override

from transferlab.errors import ConfigError
from transferlab.files import atomic_path, write_json_atomically
from transferlab.layout import LR_FIND_JSON, LR_FIND_PNG
from transferlab.run.figures import agg_figure

log = logging.getLogger(__name__)

FIND = "find"  # optimizer.lr=find: train at the finder's suggestion
SEARCH_MODES = ("exponential", "linear")
TEMPORARY_CHECKPOINTS = ".lr_find_*.ckpt"  # the model Lightning's finder saves before the search and restores after


@dataclass(frozen=True)
class LrFindSettings:
    """The range test's settings (``lr_find.*`` in the config)."""

    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_training: int = 100
    mode: str = "exponential"
    early_stop_threshold: float | None = 4.0

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "LrFindSettings":
        """The settings of ``lr_find`` (defaults where a key is missing), checked; a ConfigError names the bad one."""
        settings = cls(**{key: value for key, value in (node or {}).items() if key in cls.__dataclass_fields__})
        numbers = [settings.min_lr, settings.max_lr]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 for n in numbers) \
                or settings.min_lr >= settings.max_lr:
            raise ConfigError(f"lr_find.min_lr={settings.min_lr} and lr_find.max_lr={settings.max_lr} must be "
                              "numbers with 0 < min_lr < max_lr: the range of learning rates the finder tries.")
        # Lightning's suggestion skips the first 10 points and the last one, and needs 2 more to take a slope
        if isinstance(settings.num_training, bool) or not isinstance(settings.num_training, int) \
                or settings.num_training < 13:
            raise ConfigError(f"lr_find.num_training={settings.num_training} must be an integer of at least 13 (the "
                              "finder skips its first 10 steps); 100 is the usual choice.")
        if settings.mode not in SEARCH_MODES:
            raise ConfigError(f"lr_find.mode={settings.mode!r} is not one of {', '.join(SEARCH_MODES)}.")
        return settings


@dataclass
class LrFinding:
    """What a range test found: the suggested ``optimizer.lr`` (None when the loss gave none) and the curve."""

    settings: LrFindSettings
    suggestion: float | None
    lrs: list[float] = field(default_factory=list)
    losses: list[float | None] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The short record kept in ``results.json``: the suggestion and the range searched."""
        return {"suggestion": self.suggestion, "min_lr": self.settings.min_lr, "max_lr": self.settings.max_lr,
                "num_training": self.settings.num_training}

    def to_dict(self) -> dict[str, Any]:
        """The content of ``lr_find.json``."""
        return {"suggestion": self.suggestion, **asdict(self.settings), "steps": len(self.lrs), "lrs": self.lrs,
                "losses": self.losses}

    @classmethod
    def read(cls, path: str | Path) -> "LrFinding":
        """An ``lr_find.json`` written by :meth:`to_dict`."""
        content = json.loads(Path(path).read_text())
        settings = LrFindSettings(**{key: content[key] for key in LrFindSettings.__dataclass_fields__})
        return cls(settings, content["suggestion"], content["lrs"], content["losses"])


@contextmanager
def group_rates_kept() -> Iterator[None]:
    """Steps every optimizer group at the finder's rate x its ``lr_scale`` while the context is open.

    Lightning's finder gives every parameter group the same rate. The module's groups train at
    ``optimizer.lr x lr_scale`` (``mode.backbone_lr_ratio``, ``optimizer.layer_decay``): scaling each step keeps
    those ratios, so the rate the finder reports, and suggests, is the one for ``optimizer.lr``. The rates are
    put back after each step, where the finder's scheduler expects them.
    """
    unscaled: dict[int, list[float]] = {}

    def scale(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        unscaled[id(optimizer)] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)

    def restore(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in zip(optimizer.param_groups, unscaled.pop(id(optimizer), []), strict=False):
            group["lr"] = lr

    handles = [register_optimizer_step_pre_hook(scale), register_optimizer_step_post_hook(restore)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FrozenStagesInEval(Callback):
    """Puts the stages a finetuning callback froze in eval mode at setup, as they are in training.

    Lightning's finder steps with its own callback only, so the finetuning callbacks' ``on_train_epoch_start``,
    which puts frozen stages in eval mode (their BatchNorm on running statistics), never runs during the search;
    this runs it once, after they froze the model, for the epoch the search stands for: the first.
    Put it after them.
    """

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, BaseFinetuning):
                callback.on_train_epoch_start(trainer, pl_module)


def search(trainer: pl.Trainer, model: pl.LightningModule, datamodule: pl.LightningDataModule,
           settings: LrFindSettings, folder: str | Path) -> LrFinding:
    """Run the range test with ``trainer`` (give it :class:`FrozenStagesInEval` after the configured callbacks) and
    write ``lr_find.png`` and ``lr_find.json`` into ``folder``; a ConfigError when the loss gave no suggestion.

    The trainer's ``max_steps`` should allow ``num_training`` steps. The finder's temporary checkpoint, in the
    trainer's ``default_root_dir``, is removed, as is one an interrupted search left there.
    """
    folder = Path(folder)
    remove_temporary_checkpoints(trainer.default_root_dir)
    try:
        with group_rates_kept():
            finder = Tuner(trainer).lr_find(model, datamodule=datamodule, min_lr=settings.min_lr,
                                            max_lr=settings.max_lr, num_training=settings.num_training,
                                            mode=settings.mode, early_stop_threshold=settings.early_stop_threshold,
                                            update_attr=False)
    finally:
        remove_temporary_checkpoints(trainer.default_root_dir)
    if finder is None:
        raise ConfigError("The learning-rate finder does not run with trainer.fast_dev_run: leave it out.")
    finding = LrFinding(settings, finder.suggestion(), [float(lr) for lr in finder.results["lr"]],
                        [loss if math.isfinite(loss) else None for loss in map(float, finder.results["loss"])])
    if trainer.is_global_zero:
        write_json_atomically(folder / LR_FIND_JSON, finding.to_dict())
        plot(finder, finding, folder / LR_FIND_PNG)
    if finding.suggestion is None:
        raise ConfigError(
            f"The learning-rate finder gave no suggestion: {len(finding.lrs)} steps from lr_find.min_lr="
            f"{settings.min_lr} left too few finite losses (the loss diverged early or the data ran out; see "
            f"{folder / LR_FIND_PNG}). Lower lr_find.min_lr, raise lr_find.num_training, or set "
            "lr_find.early_stop_threshold=null; or choose optimizer.lr yourself."
        )
    log.info("Learning-rate finder: suggested optimizer.lr=%s (range %g to %g, %d steps); curve in %s",
             finding.suggestion, settings.min_lr, settings.max_lr, len(finding.lrs), folder / LR_FIND_PNG)
    return finding


def remove_temporary_checkpoints(folder: str | Path) -> None:
    """Remove the finder's temporary checkpoints from ``folder`` (a killed search leaves its one behind)."""
    for path in Path(folder).glob(TEMPORARY_CHECKPOINTS):
        path.unlink(missing_ok=True)


def plot(finder: Any, finding: LrFinding, path: Path) -> None:
    """Loss against learning rate (log scale for an exponential search), the suggestion marked; saved as PNG."""
    figure = agg_figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    finder.plot(suggest=finding.suggestion is not None, ax=axes)
    if finding.suggestion is not None:
        axes.axvline(finding.suggestion, color="red", linestyle=":", label=f"suggestion {finding.suggestion:.3g}")
        axes.legend()
    axes.set_xlabel("optimizer.lr (each parameter group at lr x its scale)")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title(f"Learning-rate range test, {len(finding.lrs)} steps")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)  # format: the temporary's suffix is not .png
