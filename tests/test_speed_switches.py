"""Speed switches: channels_last, mixed precision and torch.compile train and checkpoint like the default."""

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from transferlab.cli.train import train
from transferlab.model.module import TransferClassifier
from transferlab.run.speed import compiled, use_channels_last


def test_channels_last_with_bf16_autocast_trains_and_checkpoints(make_config, resnet18_weights):
    results = train(make_config(f"backbone.weights={resnet18_weights}", "channels_last=true",
                                "trainer.precision=bf16-mixed", "optimizer=adam", "optimizer.lr=0.001"))
    losses = [epoch["train_loss"] for epoch in results["history"]]
    assert losses[1] < losses[0]

    model = TransferClassifier.load_from_checkpoint(results["best_checkpoint"], weights=None)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_compile_switch_wraps_the_model_only_when_enabled(resnet18_weights):
    model = TransferClassifier("resnet18", ["a", "b"], weights=str(resnet18_weights))
    assert compiled(model, OmegaConf.create({"enabled": False})) is model
    assert compiled(model, None) is model
    wrapped = compiled(model, OmegaConf.create({"enabled": True, "mode": None, "backend": "eager"}))
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule) and wrapped._orig_mod is model


@pytest.mark.slow
def test_compiled_model_trains_and_saves_the_original_module(make_config, caplog):
    # AlexNet: the torchvision classifier with the fewest layers, so that tracing it takes seconds
    with caplog.at_level(logging.INFO, logger="transferlab"):
        results = train(make_config("compile.enabled=true", "compile.backend=eager", "trainer.max_epochs=1",
                                    "backbone.name=alexnet", "backbone.classifier=null", "data.image_size=64"))
    assert "torch.compile: the first training step took" in caplog.text  # the compilation's cost, logged
    checkpoint = Path(results["best_checkpoint"])
    keys = torch.load(checkpoint, weights_only=True)["state_dict"].keys()
    assert "head.0.weight" in keys and not any("_orig_mod" in key for key in keys)
    assert (TransferClassifier.load_from_checkpoint(checkpoint, weights=None).eval()(torch.rand(1, 3, 64, 64)).shape
            == (1, 3))


@pytest.mark.parametrize(("setting", "accelerator", "precision", "expected"), [
    ("auto", "cpu", "32-true", True),  # measured faster on the CPU
    ("auto", "gpu", "32-true", False),
    ("auto", "gpu", "16-mixed", True),  # tensor cores
    ("auto", "cuda", "bf16-mixed", True),
    (False, "cpu", "32-true", False),
    (True, "gpu", "32-true", True),
])
def test_channels_last_auto_is_on_except_on_a_gpu_in_32_bit(setting, accelerator, precision, expected):
    trainer = OmegaConf.create({"accelerator": accelerator, "precision": precision})
    assert use_channels_last(setting, trainer) is expected
