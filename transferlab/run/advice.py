"""Which transfer mode a data set calls for, from a frozen backbone's measured transferability and the data's size.

|            | similar to the source                  | very different                                    |
| small data | ``feature_extract`` (frozen + linear)  | ``partial``: the top half of the stages train     |
| large data | ``finetune``                           | ``finetune``                                      |

"Small" is fewer than ``LARGE_IMAGES_PER_CLASS`` training images per class. "Similar" is a linear probe on the frozen
features reaching ``SIMILAR_PROBE_SKILL`` of the way from chance (1/K) to perfect accuracy: the probe's accuracy has
a scale that carries over between data sets. LogME's does not (it depends on the number of images and classes), so
LogME ranks the backbones on this data set and is not thresholded.
"""

import re
import shlex
from dataclasses import asdict, dataclass
from typing import Any

from transferlab.model.backbones import BackboneSpec

LARGE_IMAGES_PER_CLASS = 1000  # training images per class from which a data set counts as large
SIMILAR_PROBE_SKILL = 0.7  # (probe accuracy - chance) / (1 - chance) from which the features count as similar
DEFAULT_TRAINABLE_STAGES = 2  # partial: the stages that train when the backbone's stage count is unknown
BACKPROP_COST = 3  # a training step through the backbone costs about 3 frozen forward passes (forward + backward)
RANKED_BY = "LogME"
MODE_COSTS = {"feature_extract": 1, "partial": BACKPROP_COST, "finetune": BACKPROP_COST}


@dataclass(frozen=True)
class DataSize:
    """The training images per class (the size that matters for the rule) and the validation images."""

    class_names: list[str]
    train_counts: list[int]
    val_images: int

    @property
    def images_per_class(self) -> float:
        return sum(self.train_counts) / len(self.train_counts)

    @property
    def balance(self) -> float:
        """Smallest over largest class: 1.0 balanced."""
        return min(self.train_counts) / max(self.train_counts)


@dataclass(frozen=True)
class Measurement:
    """What advise measured for one backbone with its weights (``label`` tells entries apart in the table)."""

    label: str
    backbone: BackboneSpec
    probe_accuracy: float
    logme: float
    feature_dim: int
    seconds_per_image: float  # the frozen forward pass, data loading included, on the device advise ran on
    images_measured: int
    stages: int | None = None  # the backbone's stages (transferlab.model.stages); None: not found


@dataclass(frozen=True)
class Recommendation:
    mode: str
    trainable_stages: int | None  # for partial
    similar: bool
    small: bool
    reason: str  # one sentence

    @property
    def overrides(self) -> str:
        """The mode as train overrides: ``mode=partial mode.trainable_stages=2``."""
        stages = f" mode.trainable_stages={self.trainable_stages}" if self.trainable_stages is not None else ""
        return f"mode={self.mode}{stages}"


def probe_skill(probe_accuracy: float, num_classes: int) -> float:
    """How far the probe's accuracy lies from chance (0) to perfect (1)."""
    chance = 1 / num_classes
    return (probe_accuracy - chance) / (1 - chance)


def similar_accuracy(num_classes: int) -> float:
    """The probe accuracy from which the features count as similar, for ``num_classes`` classes."""
    return 1 / num_classes + SIMILAR_PROBE_SKILL * (1 - 1 / num_classes)


def recommend(probe_accuracy: float, logme: float, images_per_class: float, num_classes: int,
              stages: int | None = None) -> Recommendation:
    """The mode of the table above; ``stages`` (the backbone's stage count) sets partial's K to its top half."""
    skill = probe_skill(probe_accuracy, num_classes)
    similar, small = skill >= SIMILAR_PROBE_SKILL, images_per_class < LARGE_IMAGES_PER_CLASS
    size = f"{images_per_class:.0f} images per class is {'small' if small else 'large'} " \
           f"({'<' if small else '>='} {LARGE_IMAGES_PER_CLASS})"
    probe = f"a linear probe on the frozen features reaches {probe_accuracy:.0%} (LogME {logme:.3f})"
    needed = f"{similar_accuracy(num_classes):.0%}"
    if not small:
        return Recommendation("finetune", None, similar, small,
                              f"{size}: enough to fine-tune every layer ({probe}).")
    if similar:
        return Recommendation("feature_extract", None, similar, small,
                              f"{size} and {probe}, at least {needed}: keep the backbone frozen, train a linear head.")
    trainable = max(1, stages // 2) if stages else DEFAULT_TRAINABLE_STAGES
    return Recommendation("partial", trainable, similar, small,
                          f"{size} and {probe}, below {needed}: retrain the top {trainable} stages, keep the early "
                          "ones frozen.")


def estimated_run_seconds(seconds_per_image: float, data: DataSize, epochs: int, mode: str) -> float:
    """Seconds of a training run: the measured frozen forward time x images x epochs, x ``BACKPROP_COST`` on the
    training images when the backbone trains. An estimate: it leaves out start-up and assumes the same device."""
    return seconds_per_image * (sum(data.train_counts) * MODE_COSTS[mode] + data.val_images) * epochs


def ranked(measurements: list[Measurement]) -> list[Measurement]:
    """Best first: by LogME, then by probe accuracy."""
    return sorted(measurements, key=lambda m: (m.logme, m.probe_accuracy), reverse=True)


def hydra_override(key: str, value: object) -> str:
    """``key=value`` for a Hydra command line, quoted for Hydra and for the shell where needed."""
    text = "null" if value is None else str(value)
    if not re.fullmatch(r"[\w./~:+@-]+", text):
        text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return shlex.quote(f"{key}={text}")


def train_command(passthrough: list[str], measurement: Measurement, recommendation: Recommendation,
                  preset: str, group: dict[str, Any]) -> str:
    """The ``python -m transferlab.train`` command for this backbone and mode.

    ``passthrough``: the user's overrides that train shares (data.*, seed, ...); ``preset``: the conf/backbone/
    choice the backbone is spelled from, ``group`` its values (``transferlab.model.backbones.BackboneSpec.overrides``).
    """
    backbone = [hydra_override(key, value) for key, value in measurement.backbone.overrides(preset, group)]
    return " ".join(["python -m transferlab.train", *map(shlex.quote, passthrough), *backbone,
                     recommendation.overrides])


def duration(seconds: float) -> str:
    """``~40 s``, ``~12 min``, ``~3.5 h``."""
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Advice:
    """One backbone's row: its measurement, the recommended mode, the estimated run time and the command."""

    measurement: Measurement
    recommendation: Recommendation
    estimated_run_s: float
    command: str

    def to_dict(self, rank: int) -> dict:
        measured = asdict(self.measurement)
        # the backbone's stage list is in the command; "stages" here is how many it has (``Measurement.stages``)
        backbone = {key: value for key, value in measured.pop("backbone").items() if key != "stages"}
        return {"rank": rank, "label": measured.pop("label"), **backbone, **measured, **asdict(self.recommendation),
                "estimated_run_s": round(self.estimated_run_s, 1), "command": self.command}


def render(advice: list[Advice], data: DataSize, context: dict) -> str:
    """The Markdown report (printed, and written to advice.md); ``advice`` is ranked, best first.

    ``context``: ``data_root``, ``sample_per_class``, ``image_size``, ``device``, ``epochs``.
    """
    k = len(data.class_names)
    counts = ", ".join(f"{name} {count}" for name, count in zip(data.class_names, data.train_counts, strict=True))
    measured = sum(a.measurement.images_measured for a in advice[:1])
    sample = (f"a seeded sample of at most {context['sample_per_class']} images per class of train and of val "
              f"({measured} images)" if context["sample_per_class"] else f"every image ({measured})")
    lines = [
        "# Advice: which backbone, which mode", "",
        f"Data: {context['data_root']}: {k} classes, {sum(data.train_counts)} train images ({counts}), "
        f"{data.val_images} val; {data.images_per_class:.0f} train images per class, smallest/largest class "
        f"{data.balance:.2f}.",
        f"Measured with each backbone frozen ({context['image_size']} px, {context['device']}) on {sample}.", "",
        f"Rule: small data is < {LARGE_IMAGES_PER_CLASS} train images per class; the features are similar when the "
        f"linear probe's accuracy is at least chance + {SIMILAR_PROBE_SKILL} x (1 - chance) = "
        f"{similar_accuracy(k):.0%} for {k} classes. Small and similar: feature_extract; small and different: "
        f"partial (the top half of the backbone's stages train); large: finetune. Ranked by {RANKED_BY} "
        "(higher is better), then probe accuracy.", "",
        "| rank | backbone | probe acc | LogME | recommended mode | why | est. run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rank, row in enumerate(advice, 1):
        m, r = row.measurement, row.recommendation
        lines.append(f"| {rank} | {m.label} | {m.probe_accuracy:.3f} | {m.logme:.3f} | `{r.overrides}` | {r.reason} "
                     f"| {duration(row.estimated_run_s)} |")
    lines += [
        "", f"Est. run: an estimate, the measured frozen forward time per image x ({sum(data.train_counts)} train "
        f"images, x {BACKPROP_COST} when the backbone trains, + {data.val_images} val) x {context['epochs']} epochs "
        "(trainer.max_epochs), on this device.", "",
        "Next:", "", f"    {advice[0].command}",
    ]
    return "\n".join(lines) + "\n"
