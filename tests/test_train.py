"""What a training run leaves behind: checkpoints, results.json, TensorBoard logs; and every optimizer/scheduler."""

import json
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


@pytest.mark.parametrize("choice", ["optimizer=sgd", "optimizer=adam", "optimizer=adamw", "scheduler=step",
                                    "scheduler=onecycle", "scheduler=cosine", "scheduler=none"])
def test_every_optimizer_and_scheduler_trains(make_config, choice):
    results = train(make_config(choice, "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                                "+trainer.limit_val_batches=1", "~callbacks.model_checkpoint"))
    assert results["epochs_run"] == 1


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


def test_transferlab_checkpoint_is_reused_as_backbone_weights(make_config, finished_run):
    run_dir, results = finished_run
    probe = []

    class InitialWeights(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            probe.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    train(make_config(f"backbone.weights={results['best_checkpoint']}", "trainer.max_epochs=1"), [InitialWeights()])
    saved = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for key in ("backbone.conv1.weight", "backbone.layer4.1.bn2.running_var", "head.0.weight"):
        assert torch.equal(probe[0][key], saved[key]), key  # same classes: the head is reused too
