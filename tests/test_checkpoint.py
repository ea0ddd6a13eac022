"""A checkpoint carries the preprocessing it was trained with, however it is reloaded."""

import os
import random
from pathlib import Path

import lightning
import pytest
import torch
from torchvision.models import ResNet50_Weights, resnet50

from transferlab.data.transforms import Preprocessing
from transferlab.errors import ConfigError
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.loading import load_safely
from transferlab.model.module import TransferClassifier

TORCH_ADVICE = ("Weights only load failed", "file an issue", "weights_only", "Check the documentation", "miniz",
                "add_safe_globals", "high likelihood")


@pytest.fixture
def resnet50_v1_in_hub_cache(tmp_path: Path):
    """Random ResNet-50 weights where torchvision looks for IMAGENET1K_V1 (the hash is checked on download only)."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(resnet50().state_dict(), cached)
    yield
    torch.hub.set_dir(previous)


def save_checkpoint(model: TransferClassifier, path: Path) -> Path:
    """What Lightning's checkpoint holds for loading: the tensors and the hyper-parameters."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_a_reloaded_model_keeps_the_preprocessing_of_the_weights_it_started_from(resnet50_v1_in_hub_cache, tmp_path):
    model = TransferClassifier("resnet50", ["ant", "bee"], weights="IMAGENET1K_V1")
    trained_with = preprocessing(model)
    assert trained_with.resize_size == 256  # V1's preset; DEFAULT (V2) resizes to 232
    path = save_checkpoint(model, tmp_path / "model.ckpt")

    reloaded = TransferClassifier.load_from_checkpoint(path, weights=None)  # no download on reload
    assert preprocessing(reloaded) == trained_with
    assert preprocessing(load_classifier(path)) == trained_with


def test_an_older_checkpoint_without_stored_preprocessing_derives_it(tmp_path):
    model = TransferClassifier("resnet18", ["a", "b"], weights=None)
    path = tmp_path / "old.ckpt"
    # written before backbones had a source (torchvision's, then) and before the preprocessing was stored
    hparams = {key: value for key, value in model.hparams.items() if key not in ("preprocessing", "source")}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**hparams, "image_size": 64}}, path)
    loaded = load_classifier(path)
    assert preprocessing(loaded) == Preprocessing(64, 73, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert loaded.hparams.source == "torchvision"
    torch.testing.assert_close(loaded(torch.ones(1, 3, 64, 64)), model.eval()(torch.ones(1, 3, 64, 64)))


# --- files that must not load: the real reason, first, in one sentence ---------------------------


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load_classifier(path)
    message = str(error.value)
    assert not [advice for advice in TORCH_ADVICE if advice in message], message
    return message


class RunsShell:
    """Unpickles as ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_file_with_pickled_code_names_what_it_would_have_run(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": RunsShell(f"touch {marker}")}, path)
    assert refusal(path).startswith(f"ckpt={path} was refused: it holds a pickled reference to os.system, which "
                                    "could run code, so it was not loaded. Give checkpoints/best.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("content, starts", [
    (random.Random(0).randbytes(4096), r"b'\xcd\x07,\xd8\xbeo\x9fb\xacL\t\xc2\x82\x06\xe7\xe3'"),
    (b"q\x00" + bytes(100), r"b'q\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'"),  # IndexError
    (b"<html>Sign in to continue</html>", "b'<html>Sign in to'"),
], ids=["random", "index-error", "html"])
def test_a_file_of_another_format_is_not_a_pytorch_file(tmp_path, content, starts):
    path = tmp_path / "other.ckpt"
    path.write_bytes(content)
    assert refusal(path) == (f"ckpt={path} is not a PyTorch file (it starts with {starts}, not with the zip or "
                             "pickle header torch.save writes). Give checkpoints/best.ckpt or last.ckpt of a python "
                             "-m transferlab.train run, from a trusted source.")


def test_a_truncated_checkpoint_says_so(tmp_path):
    whole = save_checkpoint(TransferClassifier("resnet18", ["a", "b"], weights=None), tmp_path / "whole.ckpt")
    path = tmp_path / "cut.ckpt"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert refusal(path).startswith(
        f"ckpt={path} is truncated or damaged: it starts as a PyTorch file but ends early (RuntimeError: failed "
        "reading zip archive: failed finding central directory); it may still be being written, or be an "
        "interrupted copy or download."
    )


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(ConfigError, match=r"^backbone.weights=\S+ is empty \(0 bytes\), so it is not a PyTorch file"):
        load_safely(path, "backbone.weights", "Give another file.")
