"""Tests for transferlab.transforms: preprocessing comes from the backbone's weights."""

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import (
    EfficientNet_B0_Weights,
    ResNet18_Weights,
    ResNet50_Weights,
)
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from transferlab.data.transforms import eval_transform, train_transform

# Stand-in weights with a preset unlike any ImageNet one, so hard-coded values would show.
ODD = SimpleNamespace(
    transforms=partial(ImageClassification, crop_size=20, resize_size=30, mean=(0.5, 0.25, 0.1), std=(0.2, 0.4, 0.8))
)
COLOUR = (200, 100, 50)


def constant_image(width: int = 50, height: int = 40) -> Image.Image:
    return Image.new("RGB", (width, height), COLOUR)


def noise_image(width: int = 50, height: int = 40) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def normalised_colour(mean, std) -> torch.Tensor:
    """(v - mean) / std of COLOUR, shaped (3, 1, 1)."""
    value = torch.tensor(COLOUR, dtype=torch.float32) / 255
    return ((value - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1)


def test_eval_crop_keeps_weights_resize_ratio():
    preset = eval_transform(ResNet18_Weights.DEFAULT, 112)
    assert list(preset.crop_size) == [112]
    assert list(preset.resize_size) == [128]  # 112 * 256 / 224


def test_eval_ratio_follows_the_weights_own_resize():
    preset = eval_transform(ResNet50_Weights.IMAGENET1K_V2, 112)  # resize 232, crop 224
    assert list(preset.resize_size) == [116]
    assert list(eval_transform(ODD, 40).resize_size) == [60]  # 30/20 ratio


def test_eval_keeps_weights_interpolation():
    assert eval_transform(EfficientNet_B0_Weights.DEFAULT, 112).interpolation == InterpolationMode.BICUBIC


def test_eval_output_shape_is_the_crop():
    out = eval_transform(ResNet18_Weights.DEFAULT, 112)(noise_image(300, 200))
    assert out.dtype == torch.float32
    assert out.shape == (3, 112, 112)


def test_eval_normalises_with_weights_mean_std():
    out = eval_transform(ODD, 16)(constant_image())
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out, normalised_colour(ODD.transforms().mean, ODD.transforms().std).expand(3, 16, 16))


def test_eval_normalises_resnet_with_imagenet_mean_std():
    out = eval_transform(ResNet18_Weights.DEFAULT, 32)(constant_image())
    expected = normalised_colour([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(out, expected.expand(3, 32, 32))


def test_eval_without_image_size_is_weights_preset():
    preset = eval_transform(ResNet18_Weights.DEFAULT, None)
    reference = ResNet18_Weights.DEFAULT.transforms()
    assert list(preset.crop_size) == list(reference.crop_size) == [224]
    assert list(preset.resize_size) == list(reference.resize_size) == [256]
    assert preset.mean == reference.mean and preset.std == reference.std
    assert preset.interpolation == reference.interpolation


@pytest.mark.parametrize("size", [16, 24])
def test_train_augmented_output_is_normalised_crop(size: int):
    transform = train_transform(ODD, size, [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()])
    out = transform(constant_image())  # a constant image stays constant under crop and flip
    assert out.dtype == torch.float32
    assert out.shape == (3, size, size)
    torch.testing.assert_close(out, normalised_colour(ODD.transforms().mean, ODD.transforms().std).expand(3, size, size))


def test_train_augmentation_is_applied():
    torch.manual_seed(0)
    transform = train_transform(ResNet18_Weights.DEFAULT, 16, [transforms.RandomResizedCrop(16, scale=(0.05, 0.2))])
    image = noise_image()
    assert not torch.equal(transform(image), transform(image))


@pytest.mark.parametrize("augment", [[], None])
def test_train_without_augmentation_equals_eval(augment):
    image = noise_image(70, 45)
    train_out = train_transform(ResNet18_Weights.DEFAULT, 32, augment)(image)
    eval_out = eval_transform(ResNet18_Weights.DEFAULT, 32)(image)
    assert train_out.shape == (3, 32, 32)
    assert torch.equal(train_out, eval_out)
