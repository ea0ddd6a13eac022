"""The four transfer modes, trained end to end on generated images."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from transferlab.cli.train import train
from transferlab.model.modes import BACKBONE_GROUP

LEARN = ["data.batch_size=6", "trainer.max_epochs=5", "optimizer=adam", "optimizer.lr=0.001"]


def backbone_state(path: Path) -> dict[str, torch.Tensor]:
    """Backbone tensors (parameters and BatchNorm buffers) of a transferlab checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def groups_by_name(optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    return {group["name"]: group for group in optimizer.param_groups}


class EpochProbe(pl.Callback):
    """Records, at the start of every training epoch, what trains and at which rate."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = groups_by_name(trainer.optimizers[0])
        backbone_params = {id(p) for p in pl_module.backbone.parameters()}
        self.epochs.append({
            "backbone_trainable": all(p.requires_grad for p in pl_module.backbone.parameters()),
            "backbone_training": pl_module.backbone.training,
            "groups": {name: {"ids": {id(p) for p in g["params"]}, "lr": g["lr"]} for name, g in groups.items()},
            "backbone_ids": backbone_params,
            "head_ids": {id(p) for p in pl_module.head.parameters()},
            "backbone_state": {k: v.clone() for k, v in pl_module.backbone.state_dict().items()},
        })


@pytest.mark.parametrize("mode", ["scratch", "finetune"])
def test_training_modes_learn_separable_classes(make_config, resnet18_weights, mode):
    results = train(make_config(f"mode={mode}", f"backbone.weights={resnet18_weights}", *LEARN))
    assert results["best_val_acc"] >= 0.8  # three classes: chance is 0.33
    assert results["params_trainable"] == results["params_total"]
    assert results["weights"] == (None if mode == "scratch" else str(resnet18_weights))


def test_feature_extract_keeps_backbone_bit_identical(make_config, resnet18_weights):
    probe = EpochProbe()
    results = train(make_config("mode=feature_extract", f"backbone.weights={resnet18_weights}", *LEARN), [probe])

    initial = {k: v for k, v in torch.load(resnet18_weights, weights_only=True).items() if not k.startswith("fc.")}
    final = backbone_state(Path(results["best_checkpoint"]).with_name("last.ckpt"))
    assert final.keys() == initial.keys()
    assert any("running_mean" in key for key in final)  # BatchNorm statistics are compared too
    for key, tensor in initial.items():
        assert torch.equal(final[key], tensor), f"backbone tensor {key} changed"
    assert results["best_val_acc"] >= 0.8  # the head alone learns
    for epoch in probe.epochs:
        assert set(epoch["groups"]) == {"head"}
        assert epoch["groups"]["head"]["ids"] == epoch["head_ids"]
        assert not epoch["backbone_trainable"] and not epoch["backbone_training"]
    assert results["params_trainable"] == sum(p.numel() for p in torch.nn.Linear(512, 3).parameters())


def test_gradual_unfreezes_at_the_set_epoch_at_the_lower_rate(make_config, resnet18_weights):
    probe = EpochProbe()
    config = make_config("mode=gradual", "mode.unfreeze_at_epoch=2", "mode.backbone_lr_ratio=0.1",
                         "scheduler=onecycle", f"backbone.weights={resnet18_weights}", "trainer.max_epochs=3")
    train(config, [probe])

    frozen, _, unfrozen = probe.epochs
    for epoch in probe.epochs[:2]:
        assert not epoch["backbone_trainable"] and not epoch["backbone_training"]
        assert epoch["groups"][BACKBONE_GROUP]["ids"] == set()
    for key, tensor in frozen["backbone_state"].items():  # two frozen epochs changed nothing
        assert torch.equal(probe.epochs[1]["backbone_state"][key], tensor), key
    assert unfrozen["backbone_trainable"] and unfrozen["backbone_training"]
    assert unfrozen["groups"][BACKBONE_GROUP]["ids"] == unfrozen["backbone_ids"]
    assert unfrozen["groups"]["head"]["ids"] == unfrozen["head_ids"]
    # OneCycle schedules the backbone group from the start, at a tenth of the head's rate.
    assert unfrozen["groups"][BACKBONE_GROUP]["lr"] == pytest.approx(0.1 * unfrozen["groups"]["head"]["lr"])
    assert unfrozen["groups"]["head"]["lr"] != frozen["groups"]["head"]["lr"]


def test_gradual_backbone_trains_after_unfreezing(make_config, resnet18_weights):
    results = train(make_config("mode=gradual", "mode.unfreeze_at_epoch=1", f"backbone.weights={resnet18_weights}",
                                "trainer.max_epochs=2"))
    initial = torch.load(resnet18_weights, weights_only=True)
    final = backbone_state(Path(results["best_checkpoint"]).with_name("last.ckpt"))
    assert not torch.equal(final["conv1.weight"], initial["conv1.weight"])
    assert not torch.equal(final["bn1.running_mean"], initial["bn1.running_mean"])
    assert results["params_trainable"] == results["params_total"]
