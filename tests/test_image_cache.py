"""The decoded-image cache: epochs after setup decode nothing, and evaluation inputs do not change."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from torchvision.models import ResNet18_Weights
from torchvision.transforms import RandomResizedCrop

import transferlab.data.datamodule
from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.data.transforms import eval_transform, train_transform

IMAGE_SIZE = 32
PREPROCESS = eval_transform(ResNet18_Weights.DEFAULT, IMAGE_SIZE)  # resize to 37, crop 32
AUGMENT = train_transform(ResNet18_Weights.DEFAULT, IMAGE_SIZE, [RandomResizedCrop(IMAGE_SIZE)])


@pytest.fixture(scope="module")
def large_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images larger than the eval resize size, so the cache shrinks them."""
    return make_image_folder(tmp_path_factory.mktemp("large"), per_class=4, size=80)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths decoded from their files, in order."""
    decoded: list[str] = []
    original = transferlab.data.load_rgb

    def counted(path):
        decoded.append(str(path))
        return original(path)

    monkeypatch.setattr(transferlab.data.datamodule, "load_rgb", counted)
    return decoded


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    data = ImageFolderDataModule(str(root), PREPROCESS, PREPROCESS, batch_size=5, num_workers=0,
                                 cache_short_side=PREPROCESS.resize_size[0], **kwargs)
    data.setup("fit")
    return data


def all_batches(data: ImageFolderDataModule) -> list[torch.Tensor]:
    return [images for loader in (data.train_dataloader(), data.val_dataloader()) for images, _ in loader]


def test_epochs_after_setup_decode_nothing(large_images, decodes):
    data = datamodule(large_images, cache_images=True)
    assert len(decodes) == 24  # setup decoded each image once
    for _ in range(2):
        all_batches(data)
    assert len(decodes) == 24
    assert data.image_cache.nbytes == 24 * 37 * 37 * 3  # shrunk to the eval resize size, uint8


def test_cached_images_give_the_same_eval_inputs(large_images):
    cached, uncached = all_batches(datamodule(large_images, cache_images=True)), all_batches(datamodule(large_images))
    assert len(cached) == len(uncached)
    for with_cache, without in zip(cached, uncached):
        assert torch.equal(with_cache, without)


def test_cache_keeps_what_fits_and_decodes_the_rest(large_images, decodes):
    image_bytes = 37 * 37 * 3
    data = datamodule(large_images, cache_images=True, cache_max_gb=10.5 * image_bytes / 1024**3)
    assert len(data.image_cache.arrays) == 10
    decodes.clear()
    all_batches(data)
    assert len(decodes) == 24 - 10


def test_loader_processes_train_from_the_cache_without_the_files(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, size=80)
    data = ImageFolderDataModule(str(root), AUGMENT, PREPROCESS, batch_size=6, num_workers=2,
                                 cache_images=True, cache_short_side=37)
    data.setup("fit")
    shutil.rmtree(root)  # any decoding from now on would fail
    for _ in range(2):
        batches = list(data.train_dataloader())
        assert sum(len(labels) for _, labels in batches) == 12
        assert batches[0][0].shape == (6, 3, 32, 32)
