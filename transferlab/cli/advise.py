"""Advice entry point: ``python -m transferlab.advise [data.root=DIR] [backbones=[resnet18,resnet50,vgg16]]``.

For each backbone, with its configured weights, the frozen network runs once over a seeded, stratified sample of
the training and validation images (``sample_per_class``; the eval preprocessing, no augmentation), and the
features give a linear probe's validation accuracy and LogME (``transferlab.model.transferability``). The rule
of ``transferlab.run.advice`` turns them and the data's size into a mode; the report (ranked by LogME) is printed
and written to ``advice.md`` and ``advice.json`` in the run folder, with the ``python -m transferlab.train``
command to run next. Nothing is trained.
"""

import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from transferlab.cli.args import resolve_device
from transferlab.cli.build import build
from transferlab.cli.overrides import CONFIG_DIR, exit_on_bad_choices
from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.data.features import frozen_features
from transferlab.data.sampling import stratified_sample
from transferlab.errors import ConfigError
from transferlab.files import write_json_atomically, write_text_atomically
from transferlab.layout import ADVICE_JSON, ADVICE_MD
from transferlab.model.backbones import DEFAULT_SOURCE, BackboneSpec, source_of
from transferlab.model.stages import WHOLE
from transferlab.model.transferability import linear_probe_accuracy, logme
from transferlab.run import advice as rule
from transferlab.run.speed import use_channels_last

log = logging.getLogger(__name__)

OWN_KEYS = ("backbones", "backbone", "sample_per_class", "device", "hydra")  # overrides the train command leaves out


@dataclass(frozen=True)
class Candidate:
    """One backbone to measure, and its label in the table."""

    label: str
    backbone: BackboneSpec


def backbone_group(name: str) -> dict | None:
    """``conf/backbone/NAME.yaml`` as a dict, over the presets it extends (its defaults), or None when there is none."""
    path = CONFIG_DIR / "backbone" / f"{name}.yaml"
    if not path.is_file():
        return None
    group = OmegaConf.load(path)
    bases = [backbone_group(base) or {} for base in group.pop("defaults", []) if base != "_self_"]
    return OmegaConf.to_container(OmegaConf.merge(*bases, group))


def preset_for(backbone: BackboneSpec) -> tuple[str, dict]:
    """The conf/backbone/ choice a backbone is spelled from, and its values: its own preset (``resnet50``) where
    one exists for its source, else its source's (``torchvision``, ``timm``)."""
    own = backbone_group(backbone.name)
    if own is not None and own.get("source", DEFAULT_SOURCE) == backbone.source:
        return backbone.name, own
    return backbone.source, backbone_group(backbone.source) or {}


def candidates(cfg: DictConfig) -> list[Candidate]:
    """The backbones of ``backbones`` (names, or ``{name, weights, classifier, source}``); null: the configured one.

    A name takes the configured ``backbone.weights``, its own group's classifier (``conf/backbone/NAME.yaml``) and
    the source that has it (torchvision first, then timm), unless it is the configured backbone's name.
    """
    entries = cfg.get("backbones")
    if entries is None:
        entries = [OmegaConf.to_container(cfg.backbone)]
    elif OmegaConf.is_list(entries) and len(entries) > 0:
        entries = OmegaConf.to_container(entries)
    else:
        raise ConfigError(f"backbones={entries} is not a list of backbones. Give names, e.g. "
                          "backbones=[resnet18,resnet50,vgg16], or null for the configured backbone.")
    found, labels = [], set()
    for entry in entries:
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"backbones entry {entry!r} is neither a model name nor a mapping with a name, e.g. "
                              "{name:resnet18,weights:null} or {name:convnext_nano,source:timm}.")
        configured = entry["name"] == cfg.backbone.name
        source = entry.get("source") or (cfg.backbone.get("source") if configured else source_of(entry["name"]))
        group = backbone_group(entry["name"]) or {}
        backbone = BackboneSpec.from_config({
            "name": entry["name"], "source": source, "weights": entry.get("weights", cfg.backbone.weights),
            "classifier": entry.get("classifier", cfg.backbone.classifier if configured else group.get("classifier")),
            "stages": entry.get("stages", cfg.backbone.get("stages") if configured else group.get("stages"))})
        backbone.check()
        label = backbone.label()
        label = entry.get("label") or (label if label not in labels else f"{label} #{len(found) + 1}")
        labels.add(label)
        found.append(Candidate(label, backbone))
    return found


def measure(candidate: Candidate, datamodule: ImageFolderDataModule, sets: tuple[Dataset, Dataset], device: Any,
            channels_last: bool) -> rule.Measurement:
    """The frozen backbone's features of the sampled train and val sets, timed; probe accuracy and LogME."""
    torch.manual_seed(datamodule.seed)  # a random init is the same in every run
    network = candidate.backbone.build().network
    started = time.perf_counter()
    train_features, train_labels = frozen_features(network, sets[0], datamodule.batch_size, datamodule.num_workers,
                                                   device, channels_last)
    val_features, val_labels = frozen_features(network, sets[1], datamodule.batch_size, datamodule.num_workers,
                                               device, channels_last)
    seconds = time.perf_counter() - started
    images = len(train_labels) + len(val_labels)
    log.info("%s: features of %d train and %d val images in %.1f s", candidate.label, len(train_labels),
             len(val_labels), seconds)
    return rule.Measurement(
        label=candidate.label, backbone=candidate.backbone,
        probe_accuracy=linear_probe_accuracy(train_features, train_labels, val_features, val_labels),
        logme=logme(train_features, train_labels), feature_dim=train_features.shape[1],
        seconds_per_image=seconds / images, images_measured=images,
        stages=stage_count(network, candidate.backbone))


def stage_count(network: torch.nn.Module, backbone: BackboneSpec) -> int | None:
    """How many stages ``mode=partial`` can train in this backbone (None: its layout has no stages to find)."""
    stages = backbone.find_stages(network, strict=False)
    return None if [stage.name for stage in stages] == [WHOLE] else len(stages)


def passthrough(overrides: list[str]) -> list[str]:
    """The command-line overrides the train command repeats: all but advise's own and the backbone's."""
    key = lambda override: override.split("=", 1)[0].lstrip("+~").split(".")[0]
    return [override for override in overrides if key(override) not in OWN_KEYS]


def advise(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Measure every backbone, print the ranked report, write advice.json and advice.md; returns advice.json's content.

    ``overrides``: the command line's (for the train command); None: ``data.root`` only.
    """
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root is not set. Give the folder holding train/ (and optionally val/), one sub-folder "
                          "of images per class: python -m transferlab.advise data.root=~/photos.")
    per_class = cfg.get("sample_per_class")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 2):
        raise ConfigError(f"sample_per_class={per_class} must be a whole number of at least 2 (images per class of "
                          "train and of val that each backbone runs on), or null for every image.")
    chosen = candidates(cfg)
    output_dir = Path(cfg.paths.output_dir)
    device = resolve_device(cfg.get("device", "auto"))
    channels_last = use_channels_last(cfg.channels_last, cfg.trainer)
    datamodules: dict[Any, ImageFolderDataModule] = {}  # one per distinct preprocessing (resize, crop, mean, std)
    measurements = []
    for candidate in chosen:
        preprocessing = candidate.backbone.preprocessing()
        key = preprocessing.at_size(cfg.data.image_size)
        if key not in datamodules:
            datamodules[key] = build(cfg.data, _partial_=True)(preprocessing=preprocessing, seed=cfg.seed,
                                                                 run_dir=str(output_dir))
            datamodules[key].prepare_data()
            datamodules[key].setup("fit")
        datamodule = datamodules[key]
        sets = (stratified_sample(datamodule.train_set, per_class, cfg.seed),
                stratified_sample(datamodule.val_set, per_class, cfg.seed))
        measurements.append(measure(candidate, datamodule, sets, device, channels_last))
    data = rule.DataSize(datamodule.class_names, datamodule.class_counts, len(datamodule.val_set))
    shared = passthrough(overrides) if overrides is not None else [f"data.root={cfg.data.root}"]
    rows = []
    for measurement in rule.ranked(measurements):
        recommendation = rule.recommend(measurement.probe_accuracy, measurement.logme, data.images_per_class,
                                        len(data.class_names), stages=measurement.stages)
        rows.append(rule.Advice(measurement, recommendation,
                                rule.estimated_run_seconds(measurement.seconds_per_image, data,
                                                           cfg.trainer.max_epochs, recommendation.mode),
                                rule.train_command(shared, measurement, recommendation,
                                                   *preset_for(measurement.backbone))))
    context = {"data_root": str(datamodule.root), "sample_per_class": per_class, "image_size": cfg.data.image_size,
               "device": str(device), "epochs": cfg.trainer.max_epochs}
    report = rule.render(rows, data, context)
    content = {**context, "data": {**asdict(data), "images_per_class": data.images_per_class,
                                   "balance": data.balance},
               "thresholds": {"large_images_per_class": rule.LARGE_IMAGES_PER_CLASS,
                              "similar_probe_skill": rule.SIMILAR_PROBE_SKILL,
                              "similar_probe_accuracy": rule.similar_accuracy(len(data.class_names))},
               "ranked_by": rule.RANKED_BY, "backbones": [row.to_dict(rank) for rank, row in enumerate(rows, 1)],
               "command": rows[0].command}
    write_json_atomically(output_dir / ADVICE_JSON, content)
    write_text_atomically(output_dir / ADVICE_MD, report)
    print(report, flush=True)
    log.info("Advice written to %s and %s", output_dir / ADVICE_MD, output_dir / ADVICE_JSON)
    return content


def main() -> None:
    """``python -m transferlab.advise``: a config-group choice that conf/ lacks ends with exit code 2 before Hydra
    composes (see ``transferlab.cli.overrides``); then Hydra runs ``run``."""
    exit_on_bad_choices("transferlab.advise", sys.argv[1:], CONFIG_DIR)
    run()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="advise")
def run(cfg: DictConfig) -> None:
    """Hydra's task function; bad input ends with its message and exit code 2."""
    try:
        advise(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
