"""Augmentation on the device: the same crop and flip distributions as in the loader, batches the model can train on,
and the rule that decides where it runs."""

import statistics

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomHorizontalFlip, RandomResizedCrop

from conftest import make_datamodule
from transferlab.cli.build import build_datamodule
from transferlab.cli.train import train
from transferlab.data.device_augment import DeviceAugment, use_device_augment
from transferlab.errors import ConfigError

WIDTH, HEIGHT, CROP, SAMPLES = 400, 300, 24, 400


def coordinate_image() -> np.ndarray:
    """Red rises from left to right and green from top to bottom, so a crop's colours tell where it was cut."""
    x = np.linspace(0, 255, WIDTH)[None, :].repeat(HEIGHT, 0)
    y = np.linspace(0, 255, HEIGHT)[:, None].repeat(WIDTH, 1)
    return np.stack([x, y, np.zeros_like(x)], axis=-1).round().astype(np.uint8)


def crop_statistics(crops: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per crop (3, H, W) in [0, 255]: whether it was flipped, the share of the width and height it spans."""
    flipped, widths, heights = [], [], []
    for crop in crops:
        left, right = crop[0, :, 0].mean().item(), crop[0, :, -1].mean().item()
        top, bottom = crop[1, 0, :].mean().item(), crop[1, -1, :].mean().item()
        flipped.append(float(left > right))
        widths.append(abs(right - left) / 255 * CROP / (CROP - 1))
        heights.append((bottom - top) / 255 * CROP / (CROP - 1))
    return {"flipped": flipped, "width": widths, "height": heights,
            "area": [w * h for w, h in zip(widths, heights, strict=True)]}


def test_crops_and_flips_on_the_device_follow_the_loaders_distributions():
    augment = [RandomResizedCrop(CROP), RandomHorizontalFlip()]
    image = coordinate_image()
    torch.manual_seed(0)
    in_loader = [torch.from_numpy(np.array(RandomHorizontalFlip()(RandomResizedCrop(CROP)(Image.fromarray(image)))))
                 .permute(2, 0, 1).float() for _ in range(SAMPLES)]
    torch.manual_seed(1)
    on_device = DeviceAugment(augment, mean=[0, 0, 0], std=[1 / 255] * 3)
    batch = on_device([torch.from_numpy(image).permute(2, 0, 1).contiguous() for _ in range(SAMPLES)])
    assert batch.shape == (SAMPLES, 3, CROP, CROP) and batch.dtype == torch.float32
    loader_stats, device_stats = crop_statistics(in_loader), crop_statistics(list(batch))
    assert 0.4 < statistics.mean(device_stats["flipped"]) < 0.6
    for key in ("flipped", "width", "height", "area"):
        assert statistics.mean(device_stats[key]) == pytest.approx(statistics.mean(loader_stats[key]), abs=0.06), key
    for key in ("width", "height", "area"):  # the spread too: RandomResizedCrop's scale (0.08, 1) and ratio ranges
        for quantile_device, quantile_loader in zip(statistics.quantiles(device_stats[key], n=4),
                                                    statistics.quantiles(loader_stats[key], n=4), strict=True):
            assert quantile_device == pytest.approx(quantile_loader, abs=0.08), key


def test_device_augmentation_normalises_as_the_loader_does():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    [normalised] = DeviceAugment([], mean, std)([image])
    expected = (image.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(normalised, expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_serves_decoded_images_and_the_batch_is_augmented_after_the_copy(image_folder, workers):
    data = make_datamodule(image_folder, augment=[RandomResizedCrop(32), RandomHorizontalFlip()],
                           device_augment=True, num_workers=workers)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert isinstance(images, list) and {image.dtype for image in images} == {torch.uint8}
    assert {tuple(image.shape) for image in images} == {(3, 40, 40)}  # as decoded, not cropped
    augmented, same_labels = data.on_after_batch_transfer((images, labels), 0)
    assert augmented.shape == (4, 3, 32, 32) and same_labels is labels
    val_images, _ = next(iter(data.val_dataloader()))
    assert data.on_after_batch_transfer((val_images, labels), 0)[0] is val_images  # eval batches pass through


def test_a_run_with_device_augmentation_learns(make_config):
    results = train(make_config("data.device_augment=true", "backbone.name=resnet18", "trainer.max_epochs=3",
                                "optimizer=adam", "optimizer.lr=0.003"))
    assert results["best_val_acc"] > 0.6  # three colour classes: chance is 0.33


@pytest.mark.parametrize(("setting", "on_gpu", "augmented", "caches_features", "expected"), [
    ("auto", True, True, False, True),
    ("auto", False, True, False, False),
    (True, False, True, False, True),
    (True, True, False, False, False),  # no augmentation: the eval transform, in the loader
    ("auto", True, True, True, False),  # the feature cache augments once, before training
    (False, True, True, False, False),
])
def test_device_augmentation_is_on_with_a_gpu_where_there_is_augmentation_to_run(setting, on_gpu, augmented,
                                                                                 caches_features, expected):
    assert use_device_augment(setting, on_gpu, augmented, caches_features) is expected


def test_a_data_module_given_the_unresolved_auto_augments_in_the_loader(image_folder):
    data = make_datamodule(image_folder, augment=[RandomResizedCrop(32)], device_augment="auto")
    assert data.device_augment is None  # the run resolves auto (build_datamodule); the class cannot see the trainer


def test_an_unknown_device_augment_setting_is_refused():
    with pytest.raises(ConfigError, match="data.device_augment='gpu' is not one of auto, true, false"):
        use_device_augment("gpu", True, True, False)


def test_the_feature_cache_keeps_augmentation_in_the_loader_even_when_the_device_is_asked_for(make_config, tmp_path):
    cfg = make_config("mode=feature_extract", "data.device_augment=true")
    assert build_datamodule(cfg, tmp_path).device_augment is None
