"""What a training run leaves behind: checkpoints, results.json, TensorBoard logs; and every optimizer/scheduler."""

import json
import logging
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config
from transferlab.cli.train import train
from transferlab.model.module import TransferClassifier

RESULT_KEYS = {
    "backbone", "mode", "weights", "classes", "epochs_run", "best_epoch", "best_val_acc", "best_val_loss",
    "final_val_acc", "train_time_s", "train_images_per_s", "params_trainable", "params_total", "best_checkpoint",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, image_folder):
    """One finetune run of 3 epochs, shared by the tests that read what it left."""
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train(compose_config(run_dir, f"data.root={image_folder}", "trainer.max_epochs=3",
                                         "optimizer=adam"))


def test_results_json_has_every_figure(finished_run):
    run_dir, returned = finished_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results.keys() >= RESULT_KEYS
    assert results == returned
    assert results["backbone"] == "resnet18" and results["mode"] == "finetune" and results["weights"] is None
    assert results["classes"] == ["blue", "green", "red"]
    assert results["epochs_run"] == 3
    accuracies = [epoch["val_acc"] for epoch in results["history"]]
    assert results["best_val_acc"] == max(accuracies) and results["final_val_acc"] == accuracies[-1]
    assert results["best_epoch"] == accuracies.index(max(accuracies))
    assert results["best_val_loss"] == min(epoch["val_loss"] for epoch in results["history"])
    assert results["train_images_per_s"] > 0 and results["train_time_s"] > 0
    assert results["params_trainable"] == results["params_total"] > 11_000_000


def test_best_and_last_checkpoints(finished_run):
    run_dir, results = finished_run
    best, last = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    assert Path(results["best_checkpoint"]) == best.resolve() and last.is_file()
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == results["best_epoch"]
    model = TransferClassifier.load_from_checkpoint(best, map_location="cpu", weights=None)
    assert model.hparams.class_names == ["blue", "green", "red"]
    assert torch.equal(model.head[-1].weight, checkpoint["state_dict"]["head.0.weight"])


def test_tensorboard_has_metrics_learning_rates_and_hyperparameters(finished_run):
    run_dir, _ = finished_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= scalars
    assert {"lr-Adam/backbone", "lr-Adam/head"} <= scalars
    assert len(events.Scalars("val/acc")) == 3
    assert {"hp/best_val_acc", "hp/best_val_loss"} <= scalars  # the HParams tab's metrics
    assert events.PluginTagToContent("hparams")
    hparams = (run_dir / "tensorboard" / "hparams.yaml").read_text()
    assert "backbone: resnet18" in hparams and "batch_size: 12" in hparams


def one_cycle(lr: float, steps: int) -> list[float]:
    """torch's OneCycleLR rates at each of ``steps`` steps, as conf/scheduler/onecycle.yaml sets it up."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.3)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


# 2 epochs of 1 batch at optimizer.lr=0.001: the optimizer, and the head's rate at each step
SCHEDULES = {
    "optimizer=sgd": ("SGD", [1e-3, 1e-3]),  # conf/scheduler/step.yaml decays after 7 epochs
    "optimizer=adam": ("Adam", [1e-3, 1e-3]),
    "optimizer=adamw": ("AdamW", [1e-3, 1e-3]),
    "scheduler=step": ("SGD", [1e-3, 1e-4]),  # with scheduler.step_size=1: x0.1 after epoch 0
    "scheduler=cosine": ("SGD", [1e-3, 5e-4]),  # T_max = 2 epochs: half-way down after epoch 0
    "scheduler=onecycle": ("SGD", one_cycle(1e-3, 2)),  # stepped every batch
    "scheduler=none": ("SGD", [1e-3, 1e-3]),
}


class StepProbe(pl.Callback):
    """The optimizer, the head's rate at every training step, and the head's weights before and after fit."""

    def __init__(self) -> None:
        self.optimizer, self.rates, self.head = None, [], []

    def on_train_start(self, trainer, pl_module):
        self.optimizer = type(trainer.optimizers[0]).__name__
        self.head.append(pl_module.head[-1].weight.detach().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates += [g["lr"] for g in trainer.optimizers[0].param_groups if g.get("name") == "head"]

    def on_train_end(self, trainer, pl_module):
        self.head.append(pl_module.head[-1].weight.detach().clone())


@pytest.mark.parametrize("choice", list(SCHEDULES))
def test_every_optimizer_and_scheduler_trains(make_config, choice, caplog, recwarn):
    probe = StepProbe()
    step_size = ["scheduler.step_size=1"] if choice == "scheduler=step" else []
    lightning = logging.getLogger("lightning.pytorch")  # it keeps its own records from the root logger (and caplog)
    lightning.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            results = train(make_config(choice, *step_size, "trainer.max_epochs=2", "+trainer.limit_train_batches=1",
                                        "+trainer.limit_val_batches=1", "~callbacks.model_checkpoint",
                                        "trainer.log_every_n_steps=50"), [probe])
    finally:
        lightning.removeHandler(caplog.handler)
    optimizer, rates = SCHEDULES[choice]
    assert results["epochs_run"] == 2 and probe.optimizer == optimizer
    assert probe.rates == pytest.approx(rates, rel=1e-6)
    assert not torch.equal(*probe.head)  # the head's weights moved
    # the run starts from a random backbone (backbone.weights=null): the log says so and how to fix it
    assert "mode=finetune with backbone.weights=null starts from a random backbone" in caplog.text
    assert "or train from random init with mode=scratch" in caplog.text
    # Lightning's own lines stay (caught here), its adverts and its short-epoch warning (1 batch < 50) do not
    assert "GPU available" in caplog.text and "💡" not in caplog.text and "Tip:" not in caplog.text
    assert not [w for w in recwarn if "smaller than the logging interval" in str(w.message)]


def test_gradient_clipping_by_value_is_applied(make_config):
    seen = []

    class GradientProbe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # after the clipped step
            seen.append(max(p.grad.abs().max().item() for p in pl_module.parameters() if p.grad is not None))

    train(make_config("trainer.max_epochs=1", "trainer.gradient_clip_val=0.001",
                      "trainer.gradient_clip_algorithm=value", "optimizer.lr=1.0"), [GradientProbe()])
    assert seen and max(seen) <= 0.001 + 1e-9


def test_default_data_set_is_downloaded_then_trained_on(tmp_path, image_folder, server):
    archive = shutil.make_archive(str(server.root / "hymenoptera_data"), "zip", image_folder.parent, image_folder.name)
    Path(archive).rename(server.root / "hymenoptera_data.zip")
    data_dir = tmp_path / "data"
    results = train(compose_config(
        tmp_path / "run", f"paths.data_dir={data_dir}", "trainer.max_epochs=1",
        f"data.download.url={server.url('hymenoptera_data.zip')}", f"data.download.folder={image_folder.name}",
        f"data.root={data_dir / image_folder.name}"))
    assert results["classes"] == ["blue", "green", "red"]
    assert sorted(p.name for p in data_dir.iterdir()) == [image_folder.name]  # no archive or temp left
    assert server.requests == ["/hymenoptera_data.zip"]


def test_transferlab_checkpoint_is_reused_as_backbone_weights(make_config, finished_run, caplog):
    run_dir, results = finished_run
    probe = []

    class InitialWeights(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            probe.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    with caplog.at_level(logging.WARNING):
        train(make_config(f"backbone.weights={results['best_checkpoint']}", "trainer.max_epochs=1"),
              [InitialWeights()])
    assert "random backbone" not in caplog.text  # pretrained weights: no warning
    saved = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for key in ("backbone.conv1.weight", "backbone.layer4.1.bn2.running_var", "head.0.weight"):
        assert torch.equal(probe[0][key], saved[key]), key  # same classes: the head is reused too
