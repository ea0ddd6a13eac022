"""A few timed steps during setup, so that a speed switch is never the slower choice on this machine.

Which memory format and precision are faster depends on the processor, the image size and the batch size
(docs/benchmarks.md), so rules decided elsewhere backfire. ``SpeedProbe`` times the run's own model at the
run's own batch shape (``transferlab.run.step_timing``): ``channels_last=auto`` takes the faster format, and
a mixed precision that a CPU runs slower than 32-bit is reported with both figures and the setting to change;
``trainer.precision`` stays what the user set. The figures go to ``speed_probe.json`` in the run folder, and a
resumed run takes its choices from there without timing again, so it computes as the run it continues.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from transferlab.files import write_json_atomically
from transferlab.run.step_timing import StepShape, images_per_second, is_mixed

log = logging.getLogger(__name__)

FULL_PRECISION = "32-true"
MAX_SHARE = 0.05  # the probe's images at most this share of the images the run's model will process
STEPS_PER_VARIANT = 3  # one warm-up and two timed steps


@dataclass
class ProbeResult:
    """Images per second of each timed (precision, channels_last) pair, and what the run does with them."""

    precision: str
    channels_last: bool
    shape: dict[str, Any]
    images_per_s: dict[str, float] = field(default_factory=dict)  # "<precision> NCHW|NHWC" -> images/s
    warnings: list[str] = field(default_factory=list)


def variant_name(precision: str, channels_last: bool) -> str:
    return f"{precision} {'NHWC' if channels_last else 'NCHW'}"


def variants_to_time(precision: str, channels_last: bool | str, device_type: str) -> list[tuple[str, bool]]:
    """The (precision, channels_last) pairs worth timing: both formats where ``channels_last=auto``, and 32-bit
    beside a mixed precision on a CPU. Fewer than two: nothing to decide."""
    formats = [False, True] if channels_last == "auto" else [bool(channels_last)]
    precisions = [precision]
    if is_mixed(precision) and device_type == "cpu":
        precisions.append(FULL_PRECISION)
    pairs = [(p, f) for p in precisions for f in formats]
    return pairs if len(pairs) > 1 else []


def decide(precision: str, channels_last: bool | str, shape: StepShape,
           images_per_s: dict[tuple[str, bool], float]) -> ProbeResult:
    """The memory format to use at ``precision`` (the faster one where ``channels_last=auto``), and a warning
    where a mixed ``precision`` was measured slower than 32-bit."""
    at_precision = {fmt: speed for (p, fmt), speed in images_per_s.items() if p == precision}
    chosen = max(at_precision, key=at_precision.get) if channels_last == "auto" else bool(channels_last)
    result = ProbeResult(precision, chosen, asdict(shape),
                         {variant_name(p, fmt): round(speed, 2) for (p, fmt), speed in images_per_s.items()})
    full = {fmt: speed for (p, fmt), speed in images_per_s.items() if p == FULL_PRECISION}
    if precision != FULL_PRECISION and full and max(full.values()) > at_precision[chosen]:
        fastest = max(full, key=full.get)
        step = "training" if shape.train else "inference"
        result.warnings.append(
            f"trainer.precision={precision} is slower than 32-bit on this CPU for this run's {step} steps (batch "
            f"{shape.batch_size} of {shape.image_size}-px images): {at_precision[chosen]:.1f} images/s against "
            f"{full[fastest]:.1f} ({variant_name(FULL_PRECISION, fastest)}). HINT: set trainer.precision=32-true; "
            "speed_probe.json in the run folder has every figure.")
    return result


def describe(result: ProbeResult, channels_last: bool | str) -> str:
    """One line for the run log: the figures and the choice made from them."""
    figures = ", ".join(f"{name} {speed:.1f}" for name, speed in result.images_per_s.items())
    choice = (f"channels_last=auto chose {'NHWC' if result.channels_last else 'NCHW'}, the faster"
              if channels_last == "auto" else f"channels_last={channels_last} kept")
    shape = f"{result.shape['batch_size']} x {result.shape['image_size']} px"
    return f"Speed probe (images/s, {shape}): {figures}; {choice}."


class SpeedProbe(Callback):
    """Times the module's steps at each variant before fitting and sets its memory format (``set_channels_last``).

    Runs before the data loaders, the optimizer and the feature cache are built; on rank zero only, the
    choice broadcast to every process. ``train``: whether the backbone trains (a training step is timed) or
    only runs forward (an inference step, as in feature extraction).
    """

    def __init__(self, channels_last: bool | str, train: bool, image_size: int, batch_size: int,
                 record: Path, reuse: bool = False, time_eager: bool = False, images_ahead: int | None = None) -> None:
        self.channels_last, self.train, self.record, self.reuse = channels_last, train, Path(record), reuse
        self.images_ahead = images_ahead  # what the run's model will process (None: no limit): the probe's budget
        self.time_eager = time_eager  # time the run's own variant even with nothing to decide (for CompileReport)
        self.image_size, self.batch_size = image_size, batch_size
        self.result: ProbeResult | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        result = self._recorded() if self.reuse else None
        if result is None:
            result = trainer.strategy.broadcast(self._measure(trainer, pl_module) if trainer.is_global_zero else None)
            if result is None:
                return
            if trainer.is_global_zero:
                write_json_atomically(self.record, asdict(result))
                log.info("%s", describe(result, self.channels_last))
                for warning in result.warnings:
                    log.warning("%s", warning)
        pl_module.set_channels_last(result.channels_last)
        self.result = result

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ProbeResult | None:
        precision = str(trainer.precision)
        device = trainer.strategy.root_device
        pairs = variants_to_time(precision, self.channels_last, device.type)
        if not pairs and self.time_eager:
            pairs = [(precision, bool(self.channels_last))]
        if not pairs:
            return None
        cost = len(pairs) * STEPS_PER_VARIANT * self.batch_size
        if self.images_ahead is not None and cost > MAX_SHARE * self.images_ahead and not self.time_eager:
            log.info("Speed probe skipped: timing %d variants (%d images) would cost more than %.0f%% of the %d images "
                     "this run's model processes; channels_last=auto follows its fixed rule.", len(pairs), cost,
                     100 * MAX_SHARE, self.images_ahead)
            return None
        shape = StepShape(self.batch_size, self.image_size, self.train)
        classes = len(pl_module.hparams.class_names)
        speeds = {(p, fmt): images_per_second(pl_module, shape, device, p, fmt, max_seconds=1.0, classes=classes)
                  for p, fmt in pairs}
        return decide(precision, self.channels_last, shape, speeds)

    def eager_step_s(self) -> float | None:
        """Seconds of one eager step of the run's own variant, where the probe timed it."""
        if self.result is None:
            return None
        speed = self.result.images_per_s.get(variant_name(self.result.precision, self.result.channels_last))
        return self.result.shape["batch_size"] / speed if speed else None

    def _recorded(self) -> ProbeResult | None:
        """The choice of the run this one resumes, when its record is there."""
        try:
            return ProbeResult(**json.loads(self.record.read_text()))
        except (OSError, ValueError, TypeError):
            return None
