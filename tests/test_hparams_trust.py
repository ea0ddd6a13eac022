"""A checkpoint's optimizer and scheduler targets are code: only torch.optim classes are instantiated from one."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate

from conftest import make_datamodule
from transferlab.errors import ConfigError
from transferlab.model.checkpoint import load_classifier
from transferlab.model.module import TransferClassifier

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}


def fit(model: TransferClassifier, image_folder: Path, root: Path, **fit_args) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, datamodule=make_datamodule(image_folder), **fit_args)
    return trainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, image_folder) -> Path:
    """A real checkpoint, written by a Trainer after one step of a torch.optim.SGD run."""
    root = tmp_path_factory.mktemp("trained")
    model = TransferClassifier("resnet18", ["blue", "green", "red"], weights=None, optimizer=SGD)
    fit(model, image_folder, root).save_checkpoint(root / "model.ckpt")
    return root / "model.ckpt"


def with_hparams(checkpoint: Path, path: Path, **hparams) -> Path:
    """A copy of checkpoint whose hyper-parameters are updated with hparams: it still loads with weights_only."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    content["hyper_parameters"].update(hparams)
    torch.save(content, path)
    return path


def shell(marker: Path) -> dict:
    """Hydra config that runs a shell command creating marker (Hydra >= 1.3.8 blocklists os.system itself)."""
    return {"_target_": "os.system", "_args_": [f"touch {marker}"]}


def opens(marker: Path) -> dict:
    """Hydra config that creates marker when instantiated, under any Hydra version."""
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


@pytest.mark.parametrize("hparams, where", [
    (lambda marker: {"optimizer": shell(marker)}, "hparams.optimizer._target_='os.system'"),
    (lambda marker: {"optimizer": opens(marker)}, "hparams.optimizer._target_='builtins.open'"),
    (lambda marker: {"optimizer": {**SGD, "momentum": opens(marker)}}, "hparams.optimizer.momentum._target_="),
    (lambda marker: {"scheduler": opens(marker)}, "hparams.scheduler._target_='builtins.open'"),
], ids=["optimizer-os.system", "optimizer-open", "nested", "scheduler"])
@pytest.mark.parametrize("load", [
    lambda path: TransferClassifier.load_from_checkpoint(path, weights=None),
    load_classifier,
], ids=["load_from_checkpoint", "load_classifier"])
def test_a_checkpoint_naming_code_as_its_optimizer_is_refused_without_running_it(checkpoint, tmp_path, hparams,
                                                                                 where, load):
    marker = tmp_path / "pwned"
    evil = with_hparams(checkpoint, tmp_path / "evil.ckpt", **hparams(marker))
    model = load(evil)
    with pytest.raises(ConfigError) as error:
        model.configure_optimizers()
    assert not marker.exists()
    message = str(error.value)
    assert where in message and "torch.optim" in message and "hparams_from_checkpoint = False" in message
    # Such a payload is live: Hydra does run it, so the refusal above is what kept it from running.
    instantiate(opens(marker)).close()
    assert marker.exists()


@pytest.mark.parametrize("scheduler", [
    None,
    {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1, "interval": "epoch"},
    {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 0.1, "total_steps": 5,
     "interval": "step"},
], ids=["none", "StepLR", "OneCycleLR"])
def test_a_checkpoint_with_torch_optim_targets_still_configures(checkpoint, tmp_path, scheduler):
    path = with_hparams(checkpoint, tmp_path / "model.ckpt", scheduler=scheduler)
    model = TransferClassifier.load_from_checkpoint(path, weights=None)
    assert model.hparams_from_checkpoint
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if scheduler else configured
    assert isinstance(optimizer, torch.optim.SGD)
    if scheduler:
        assert type(configured["lr_scheduler"]["scheduler"]).__name__ == scheduler["_target_"].rsplit(".", 1)[1]


def test_a_model_loaded_from_a_checkpoint_trains_on(checkpoint, image_folder, tmp_path):
    # OneCycle without total_steps: configure_optimizers asks the trainer for it.
    onecycle = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 0.1, "interval": "step"}
    model = TransferClassifier.load_from_checkpoint(with_hparams(checkpoint, tmp_path / "m.ckpt", scheduler=onecycle),
                                                    weights=None)
    assert model.hparams_from_checkpoint  # restricted to torch.optim targets, which is all training needs
    assert fit(model, image_folder, tmp_path).global_step == 1


def test_a_trainers_resume_keeps_trusting_the_config(checkpoint, image_folder, tmp_path):
    model = TransferClassifier("resnet18", ["blue", "green", "red"], weights=None, optimizer=SGD)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=make_datamodule(image_folder), ckpt_path=checkpoint)
    assert trainer.global_step == 2
    assert not model.hparams_from_checkpoint  # on_load_checkpoint ran with the trainer attached
