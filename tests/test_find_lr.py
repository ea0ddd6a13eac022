"""The learning-rate finder: ``python -m transferlab.find_lr`` and ``optimizer.lr=find`` in training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import FAST, REPO
from transferlab.cli import find_lr as find_lr_cli
from transferlab.cli.train import train
from transferlab.model.modes import FreezeBackbone
from transferlab.model.module import TransferClassifier
from transferlab.run.lr_finder import FrozenStagesInEval, group_rates_kept

FINDER = ["lr_find.num_training=15", "lr_find.min_lr=1e-5"]  # the fewest steps that give a suggestion: fast
# feature_extract without augmentation: the frozen backbone runs once (feature cache), the search on the head alone
FROZEN = ["mode=feature_extract", "data.augment=[]"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_search_steps_every_group_at_the_rate_times_its_scale():
    backbone, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [backbone], "lr_scale": 0.1}, {"params": [head], "lr_scale": 1.0}],
                                lr=1.0)  # as the finder leaves them: every group at the same rate
    backbone.grad, head.grad = torch.ones(1), torch.ones(1)
    with group_rates_kept():
        optimizer.step()
    assert backbone.item() == pytest.approx(-0.1) and head.item() == pytest.approx(-1.0)
    assert [group["lr"] for group in optimizer.param_groups] == [1.0, 1.0]  # as the finder's scheduler set them
    optimizer.step()  # outside the context: no scaling
    assert backbone.item() == pytest.approx(-1.1)


def test_stages_frozen_for_the_search_run_in_eval_mode_as_in_training():
    model = TransferClassifier("resnet18", ["a", "b"], weights=None, mode="partial",
                               mode_settings={"name": "partial", "trainable_stages": 1})
    trainer = pl.Trainer(callbacks=[FreezeBackbone(), FrozenStagesInEval()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    for callback in trainer.callbacks:  # setup, in order, as the finder's fit runs it
        callback.setup(trainer, model, "fit")
    assert not model.backbone.layer3.training and not model.backbone.bn1.training  # frozen: running statistics
    assert model.backbone.layer4.training and model.head.training


def test_optimizer_lr_find_trains_at_the_suggestion_and_a_resumed_run_does_not_search_again(
        make_config, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # early stopping on, which one epoch cannot trigger: the run says it was not stopped
    overrides = ["optimizer.lr=find", *FINDER, *FROZEN, "early_stopping=val_loss"]
    results = train(make_config(*overrides, "trainer.max_epochs=1"))

    finding = json.loads((run_dir / "lr_find.json").read_text())
    suggestion = finding["suggestion"]
    assert 1e-5 <= suggestion <= 1.0 and suggestion in finding["lrs"]
    assert results["lr_find"] == {"suggestion": suggestion, "min_lr": 1e-5, "max_lr": 1.0, "num_training": 15}
    assert results["lr"] == suggestion
    assert results["stopped_early"] is False and results["stopped_epoch"] is None
    assert (run_dir / "lr_find.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(path.name for path in run_dir.rglob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # no finder's left
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == suggestion
    assert [group["lr"] for group in checkpoint["optimizer_states"][0]["param_groups"]] == [suggestion]  # the head

    def no_search(*args, **kwargs):
        raise AssertionError("a resumed run searched again")

    monkeypatch.setattr(find_lr_cli, "find_lr", no_search)
    resumed = train(make_config(*overrides, "trainer.max_epochs=2", "resume=true"))
    assert resumed["epochs_run"] == 2 and resumed["lr"] == suggestion and resumed["lr_find"] == results["lr_find"]


@pytest.mark.slow
def test_find_lr_command_prints_the_suggestion_and_the_train_command(tmp_path, image_folder):
    run_dir = tmp_path / "find"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    overrides = [f"data.root={image_folder}", f"paths.data_dir={tmp_path / 'data'}", *FAST, *FINDER, *FROZEN]
    done = subprocess.run([sys.executable, "-m", "transferlab.find_lr", f"hydra.run.dir={run_dir}", *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    finding = json.loads((run_dir / "lr_find.json").read_text())
    suggestion = finding["suggestion"]
    assert 1e-5 <= suggestion <= 1.0 and len(finding["lrs"]) == len(finding["losses"]) == finding["steps"] > 10
    assert (run_dir / "lr_find.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "results.json").exists()
    assert f"optimizer.lr={suggestion}" in done.stdout
    command = next(line.strip() for line in done.stdout.splitlines() if "python -m transferlab.train" in line)
    assert command.startswith("python -m transferlab.train ") and command.endswith(f"optimizer.lr={suggestion}")
    assert f"data.root={image_folder}" in command and "mode=feature_extract" in command and "lr_find" not in command
    assert Path(run_dir / "find_lr.log").is_file()
