"""A checkpoint carries the preprocessing it was trained with, however it is reloaded."""

from pathlib import Path

import lightning
import pytest
import torch
from torchvision.models import ResNet50_Weights, resnet50

from transferlab.data.transforms import Preprocessing
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.module import TransferClassifier


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
    hparams = {key: value for key, value in model.hparams.items() if key != "preprocessing"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**hparams, "image_size": 64}}, path)
    assert preprocessing(load_classifier(path)) == Preprocessing(64, 73, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
