"""The decoded-image cache: epochs after setup decode nothing, and by default no input changes."""

import shutil
from pathlib import Path

import pytest
import torch
from torchvision.transforms import RandomResizedCrop

import transferlab.data.datamodule
from conftest import make_datamodule, make_image_folder
from transferlab.cli.train import train
from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.errors import ConfigError

IMAGE_SIZE = 32  # ResNet-18's preprocessing: resize to 37, crop 32
SIZE = 80  # generated images, larger than the eval resize size
EXACT_BYTES, SHRUNK_BYTES = SIZE * SIZE * 3, 37 * 37 * 3  # one uint8 RGB image as decoded / shrunk


@pytest.fixture(scope="module")
def large_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images larger than the eval resize size, so a shrinking cache would change them."""
    return make_image_folder(tmp_path_factory.mktemp("large"), per_class=4, size=SIZE)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths decoded from their files, in order."""
    decoded: list[str] = []
    original = transferlab.data.datamodule.load_rgb

    def counted(path):
        decoded.append(str(path))
        return original(path)

    monkeypatch.setattr(transferlab.data.datamodule, "load_rgb", counted)
    return decoded


def datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    data = make_datamodule(root, IMAGE_SIZE, batch_size=5, **kwargs)
    data.setup("fit")
    return data


def all_batches(data: ImageFolderDataModule, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)  # the augmentation's draws, in this process (num_workers=0)
    return [images for loader in (data.train_dataloader(), data.val_dataloader()) for images, _ in loader]


def test_epochs_after_setup_decode_nothing(large_images, decodes):
    data = datamodule(large_images)
    assert len(decodes) == 24  # setup decoded each image once
    for _ in range(2):
        all_batches(data)
    assert len(decodes) == 24
    assert data.image_cache.nbytes == 24 * EXACT_BYTES  # kept as decoded, uint8


@pytest.mark.parametrize("cache_images", [True, "shrink"])
def test_cached_images_give_the_same_eval_inputs(large_images, cache_images):
    cached = all_batches(datamodule(large_images, cache_images=cache_images, augment=[]))
    uncached = all_batches(datamodule(large_images, cache_images=False, augment=[]))
    assert len(cached) == len(uncached)
    for with_cache, without in zip(cached, uncached, strict=True):
        assert torch.equal(with_cache, without)


def test_the_default_cache_gives_the_same_augmented_training_inputs(large_images):
    augment = [RandomResizedCrop(IMAGE_SIZE)]
    cached = all_batches(datamodule(large_images, augment=augment))
    uncached = all_batches(datamodule(large_images, cache_images=False, augment=augment))
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached, strict=True))
    shrunk = all_batches(datamodule(large_images, cache_images="shrink", augment=augment))
    assert not all(torch.equal(a, b) for a, b in zip(shrunk, uncached, strict=True))  # the named approximation


def test_cache_keeps_what_fits_and_decodes_the_rest(large_images, decodes):
    data = datamodule(large_images, cache_max_gb=10.5 * EXACT_BYTES / 1024**3)
    assert len(data.image_cache.arrays) == 10
    decodes.clear()
    all_batches(data)
    assert len(decodes) == 24 - 10


def test_a_shrinking_cache_shrinks_the_images_beyond_its_budget_too(large_images):
    data = datamodule(large_images, cache_images="shrink", cache_max_gb=10.5 * SHRUNK_BYTES / 1024**3)
    cache = data.image_cache
    assert len(cache.arrays) == 10
    paths = [path for path, _ in data.train_set.samples]
    assert {min(cache(path).size) for path in paths} == {37}  # one run never mixes full and shrunk images


def test_an_unknown_cache_setting_is_refused(large_images):
    with pytest.raises(ConfigError, match="data.cache_images"):
        make_datamodule(large_images, cache_images="small")


def test_loader_processes_train_from_the_cache_without_the_files(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, size=SIZE)
    data = make_datamodule(root, IMAGE_SIZE, batch_size=6, num_workers=2, augment=[RandomResizedCrop(IMAGE_SIZE)])
    data.setup("fit")
    shutil.rmtree(root)  # any decoding from now on would fail
    for _ in range(2):
        batches = list(data.train_dataloader())
        assert sum(len(labels) for _, labels in batches) == 12
        assert batches[0][0].shape == (6, 3, 32, 32)


def test_a_run_ends_with_the_same_weights_with_the_cache_and_without_it(make_config, tmp_path):
    runs = {setting: tmp_path / f"cache-{setting}" for setting in ("true", "false")}
    for setting, run_dir in runs.items():
        train(make_config(f"data.cache_images={setting}", "trainer.max_epochs=1", f"paths.output_dir={run_dir}"))
    cached, uncached = (torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                        for run_dir in runs.values())
    assert all(torch.equal(cached[key], uncached[key]) for key in uncached)
