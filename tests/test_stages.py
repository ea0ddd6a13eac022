"""Backbone stages: found for the common torchvision families, frozen per stage (mode=partial), unfrozen on a
stage-wise schedule (gradual), trained at layer-wise rates (optimizer.layer_decay), reported in trainability.md."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import compose_config
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.model.backbones import build_backbone
from transferlab.model.modes import Schedule, get_mode, plan_stages
from transferlab.model.stages import find_stages

RESNET = ["layer1", "layer2", "layer3", "layer4"]
EXPECTED = {  # backbone: (classifier, stages from input to output, a parameter of the first, one of the last)
    "resnet18": ("fc", RESNET, "conv1.weight", "layer4.1.bn2.bias"),
    "resnet50": ("fc", RESNET, "bn1.weight", "layer4.2.conv3.weight"),
    "vgg16": ("classifier", ["features.0-4", "features.5-9", "features.10-16", "features.17-23", "features.24-30"],
              "features.0.weight", "features.28.bias"),
    "efficientnet_b0": (None, [f"features.{i}" for i in range(1, 8)], "features.0.0.weight", "features.8.1.bias"),
    "mobilenet_v3_small": (None, [f"features.{i}" for i in range(1, 12)], "features.0.0.weight",
                           "features.12.0.weight"),
    "convnext_tiny": (None, ["features.1", "features.3", "features.5", "features.7"], "features.0.0.weight",
                      "classifier.0.weight"),
    "vit_b_16": (None, [f"encoder.layers.encoder_layer_{i}" for i in range(12)], "class_token", "encoder.ln.weight"),
}


@pytest.fixture(scope="module")
def networks() -> dict[str, nn.Module]:
    """Each family's backbone, randomly initialised (no download), classifier cut off: built once."""
    return {name: build_backbone(name, None, classifier).network for name, (classifier, *_) in EXPECTED.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_stages_are_found_by_structure_and_partition_the_parameters(networks, name):
    _, names, first, last = EXPECTED[name]
    network = networks[name]
    stages = find_stages(network, name)
    assert [stage.name for stage in stages] == names
    owned = [parameter for stage in stages for parameter in stage.parameter_names]
    assert sorted(owned) == sorted(n for n, _ in network.named_parameters())  # each parameter in exactly one stage
    assert sum(stage.numel(network) for stage in stages) == sum(p.numel() for p in network.parameters())
    assert first in stages[0].parameter_names and last in stages[-1].parameter_names  # stem first, final norm last


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_the_shipped_backbone_presets_leave_the_stages_to_the_rule(networks, tmp_path, name):
    cfg = compose_config(tmp_path, f"backbone={name}")
    assert cfg.backbone.stages is None  # the rule finds what the presets once listed (EXPECTED): one home
    assert find_stages(networks[name], name, EXPECTED[name][1]) == find_stages(networks[name], name)


def test_any_torchvision_backbone_by_name_finds_its_classifier_and_stages(tmp_path):
    cfg = compose_config(tmp_path, "backbone=torchvision", "backbone.name=efficientnet_b0", "mode=partial",
                         "mode.trainable_stages=3")
    model = instantiate(cfg.model, class_names=["a", "b"])
    trainable = [planned.stage.name for planned in model.stage_plan if planned.start_epoch is not None]
    assert trainable == ["features.5", "features.6", "features.7"] and model.head[-1].in_features == 1280


def test_backbone_stages_overrides_the_rule(networks):
    stages = find_stages(networks["resnet18"], "resnet18", ["layer3", "layer4.0-1"])
    assert [stage.name for stage in stages] == ["layer3", "layer4.0-1"]
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight"} < set(stages[0].parameter_names)


@pytest.mark.parametrize(("stages", "message"), [
    (["layer1", "layer5"], "'layer5' is not a submodule of resnet18"),
    (["layer1", "layer4.0-2"], "layer4 has children 0-1"),
    (["layer4", "layer1"], "must be listed from input to output"),
    (["layer1", "layer1.0"], "none may lie inside another"),
])
def test_bad_stage_paths_are_refused_with_the_fix(networks, stages, message):
    with pytest.raises(ConfigError, match="backbone.stages") as error:
        find_stages(networks["resnet18"], "resnet18", stages)
    assert message in str(error.value) and "backbone.stages=null" in str(error.value)


def test_an_unknown_layout_says_how_to_set_backbone_stages():
    network = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(ConfigError, match=r"no stage layout .* Set backbone.stages"):
        find_stages(network, "mine")
    whole = find_stages(network, "mine", strict=False)  # runs that treat every stage alike still train
    assert [stage.name for stage in whole] == ["backbone"] and len(whole[0].parameter_names) == 2


def test_schedules_count_stages_from_the_top():
    stagewise = get_mode("gradual").schedule({"unfreeze_at_epoch": 2, "unfreeze": "stagewise", "unfreeze_every": 3})
    assert [stagewise.start_epoch(k) for k in range(4)] == [2, 5, 8, 11]
    assert [get_mode("gradual").schedule({"unfreeze_at_epoch": 2}).start_epoch(k) for k in range(4)] == [2] * 4
    partial = get_mode("partial").schedule({"trainable_stages": 2})
    assert [partial.start_epoch(k) for k in range(4)] == [0, 0, None, None]
    assert [Schedule().start_epoch(k) for k in range(2)] == [0, 0]
    assert not get_mode("partial").backbone_trains({"trainable_stages": 0})  # so the feature cache applies
    assert get_mode("partial").backbone_trains({"trainable_stages": 1})


@pytest.mark.parametrize(("mode", "settings", "decay", "message"), [
    ("partial", {"trainable_stages": 5}, 1.0, "mode.trainable_stages=5 is more than the backbone's 4 stages"),
    ("partial", {"trainable_stages": -1}, 1.0, "mode.trainable_stages=-1 must be an integer of at least 0"),
    ("gradual", {"unfreeze_at_epoch": 1, "unfreeze": "layerwise"}, 1.0, "mode.unfreeze='layerwise' is not one of"),
    ("gradual", {"unfreeze_at_epoch": 1, "unfreeze": "stagewise", "unfreeze_every": 0}, 1.0, "mode.unfreeze_every=0"),
    ("finetune", {}, 0.0, "optimizer.layer_decay=0.0 is not in (0, 1]"),
    ("finetune", {}, 1.5, "optimizer.layer_decay=1.5 is not in (0, 1]"),
])
def test_impossible_stage_settings_are_refused(networks, mode, settings, decay, message):
    with pytest.raises(ConfigError) as error:
        plan_stages(find_stages(networks["resnet18"], "resnet18"), get_mode(mode).schedule(settings), 1.0, decay)
    assert message in str(error.value)


def test_groups_one_per_stage_that_ever_trains_at_decayed_rates(networks):
    stages = find_stages(networks["resnet18"], "resnet18")
    partial = plan_stages(stages, get_mode("partial").schedule({"trainable_stages": 2}), 0.5, 0.5)
    assert [(p.group, p.lr_scale) for p in partial][2:] == [("backbone.layer3", 0.25), ("backbone.layer4", 0.5)]
    assert [p.group for p in partial][:2] == [None, None]
    alike = plan_stages(stages, get_mode("finetune").schedule({}), 0.1, 1.0)  # a finetune run's groups, as before
    assert {(p.group, p.lr_scale) for p in alike} == {("backbone", 0.1)}


class StageProbe(pl.Callback):
    """At the start of every training epoch (after the freeze callback): each stage's trainability and state,
    and the parameters each optimizer group holds."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = pl_module.backbone
        named = {name.removeprefix("backbone."): id(p) for name, p in pl_module.named_parameters()}
        self.epochs.append({
            "trainable": [p.stage.name for p in pl_module.stage_plan
                          if all(x.requires_grad for x in p.stage.parameters(backbone))],
            "training": [p.stage.name for p in pl_module.stage_plan
                         if all(m.training for m in p.stage.modules(backbone))],
            "groups": {g["name"]: {n for n, i in named.items() if i in {id(x) for x in g["params"]}}
                       for g in trainer.optimizers[0].param_groups},
            "state": {k: v.clone() for k, v in backbone.state_dict().items()},
        })


def stage_of(key: str) -> str:
    return key.split(".")[0] if key.startswith("layer") else "layer1"  # the stem goes with layer1


def changed_stages(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """The stages with a tensor (parameter or BatchNorm buffer) that differs."""
    return {stage_of(key) for key in before if not torch.equal(before[key], after[key])}


def read_table(path: Path) -> dict[str, dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]
    return {row["stage"]: row for row in rows}


def learning_rates(run_dir: Path) -> dict[str, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag.removeprefix("lr-SGD/"): events.Scalars(tag)[0].value
            for tag in events.Tags()["scalars"] if tag.startswith("lr-SGD/")}


def test_partial_freezes_the_early_stages_bit_identically(make_config, resnet18_weights, tmp_path):
    probe = StageProbe()
    results = train(make_config("mode=partial", "mode.trainable_stages=2", "optimizer.layer_decay=0.5",
                                "optimizer.lr=0.01", "scheduler=none", f"backbone.weights={resnet18_weights}"),
                    [probe])
    initial = {k: v for k, v in torch.load(resnet18_weights, weights_only=True).items() if not k.startswith("fc.")}
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    final = {k.removeprefix("backbone."): v for k, v in final.items() if k.startswith("backbone.")}
    assert changed_stages(initial, final) == {"layer3", "layer4"}  # layer1, layer2 and the stem: bit-identical
    assert any(not torch.equal(initial[k], final[k]) for k in initial if k.startswith("layer3") and "running" in k)
    for epoch in probe.epochs:
        assert epoch["trainable"] == epoch["training"] == ["layer3", "layer4"]
        assert epoch["groups"]["backbone.layer3"] == {k for k in initial if k.startswith("layer3.") and "running"
                                                      not in k and "num_batches" not in k}
        assert set(epoch["groups"]) == {"backbone.layer3", "backbone.layer4", "head"}

    table = read_table(tmp_path / "run" / "trainability.md")  # what it says is what trained
    assert [row["at fit start"] for row in table.values()] == ["frozen", "frozen", "trainable", "trainable",
                                                               "trainable"]
    assert table["layer1"]["BatchNorm"].startswith("eval") and table["layer4"]["BatchNorm"].startswith("train")
    assert [table[s]["optimizer group"] for s in RESNET] == ["-", "-", "backbone.layer3", "backbone.layer4"]
    trainable = sum(int(row["parameters"].replace(",", "")) for row in table.values() if row["at fit start"]
                    == "trainable")
    assert trainable == results["params_trainable"]
    assert learning_rates(tmp_path / "run") == pytest.approx({"backbone.layer3": 0.005, "backbone.layer4": 0.01,
                                                               "head": 0.01})


def test_layer_decay_scales_each_stage_in_finetune(make_config, tmp_path):
    train(make_config("optimizer.layer_decay=0.5", "mode.backbone_lr_ratio=0.5", "optimizer.lr=0.01",
                      "scheduler=none", "trainer.max_epochs=1"))
    expected = {f"backbone.layer{4 - k}": 0.01 * 0.5 * 0.5 ** k for k in range(4)}
    assert learning_rates(tmp_path / "run") == pytest.approx({**expected, "head": 0.01})
    table = read_table(tmp_path / "run" / "trainability.md")
    assert table["layer2"]["learning rate"] == "0.00125 (lr x 0.125)"
    assert {row["at fit start"] for row in table.values()} == {"trainable"}


STAGEWISE = ["mode=gradual", "mode.unfreeze=stagewise", "mode.unfreeze_at_epoch=1", "mode.unfreeze_every=1",
             "mode.backbone_lr_ratio=1.0", "optimizer.layer_decay=0.5", "optimizer.lr=0.01", "scheduler=step",
             "scheduler.step_size=1", "scheduler.gamma=0.5", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def stagewise(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> tuple[Path, Path, StageProbe]:
    """A 3-epoch stage-wise run, probed; and the same run stopped after epoch 1 (layer4 unfrozen), then resumed."""
    whole, resumed, probe = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("resumed"), StageProbe()
    common = [f"data.root={image_folder}", *STAGEWISE]
    train(compose_config(whole, *common, "trainer.max_epochs=3"), [probe])
    train(compose_config(resumed, *common, "trainer.max_epochs=2"))
    train(compose_config(resumed, *common, "trainer.max_epochs=3", "resume=true"))  # epoch 2 unfreezes layer3
    return whole, resumed, probe


def test_stagewise_unfreezes_one_stage_from_the_top_each_epoch(stagewise):
    whole, _, probe = stagewise
    assert [epoch["trainable"] for epoch in probe.epochs] == [[], ["layer4"], ["layer3", "layer4"]]
    assert [epoch["training"] for epoch in probe.epochs] == [[], ["layer4"], ["layer3", "layer4"]]
    assert [sorted(name for name, params in epoch["groups"].items() if params) for epoch in probe.epochs] == [
        ["head"], ["backbone.layer4", "head"], ["backbone.layer3", "backbone.layer4", "head"]]
    first, second, third = (epoch["state"] for epoch in probe.epochs)
    assert changed_stages(first, second) == set()  # epoch 0: all frozen
    assert changed_stages(second, third) == {"layer4"}  # epoch 1: only layer4 trained
    table = read_table(whole / "trainability.md")
    assert [table[s]["trains from epoch"] for s in RESNET] == ["4", "3", "2", "1"]
    assert [table[s]["optimizer group"] for s in RESNET] == [f"backbone.{s}" for s in RESNET]
    assert [table[s]["learning rate"] for s in RESNET] == ["0.00125 (lr x 0.125)", "0.0025 (lr x 0.25)",
                                                           "0.005 (lr x 0.5)", "0.01 (lr x 1)"]


def test_a_run_resumed_across_an_unfreeze_ends_bit_identical(stagewise):
    whole, resumed = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in stagewise[:2])
    assert resumed["epoch"] == whole["epoch"] == 2
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for key, tensor in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], tensor), key
    assert not torch.equal(whole["state_dict"]["backbone.layer3.0.conv1.weight"],
                           stagewise[2].epochs[0]["state"]["layer3.0.conv1.weight"])  # layer3 trained in epoch 2
    table = read_table(stagewise[1] / "trainability.md")  # rewritten at the resumed run's start
    assert [table[s]["at fit start"] for s in RESNET] == ["frozen", "frozen", "frozen", "trainable"]
    optimizer, resumed_optimizer = whole["optimizer_states"][0], resumed["optimizer_states"][0]
    assert [g["name"] for g in optimizer["param_groups"]] == [f"backbone.{s}" for s in RESNET] + ["head"]
    assert [g["params"] for g in resumed_optimizer["param_groups"]] == [g["params"] for g in optimizer["param_groups"]]
    assert [g["lr"] for g in resumed_optimizer["param_groups"]] == [g["lr"] for g in optimizer["param_groups"]]
    for index, state in optimizer["state"].items():
        assert torch.equal(resumed_optimizer["state"][index]["momentum_buffer"], state["momentum_buffer"])
