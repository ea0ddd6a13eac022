"""Preprocessing comes from the backbone's weights, survives a round trip, and equals torchvision's own."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import EfficientNet_B0_Weights, ResNet18_Weights, ResNet50_Weights, ViT_B_16_Weights

from transferlab.data.transforms import Preprocessing
from transferlab.model.backbones import preprocessing_for

# A preprocessing unlike any ImageNet one, so hard-coded values would show.
ODD = Preprocessing(crop_size=20, resize_size=30, mean=(0.5, 0.25, 0.1), std=(0.2, 0.4, 0.8))
COLOUR = (200, 100, 50)


def of(weights) -> Preprocessing:
    return Preprocessing.from_preset(weights.transforms())


def constant_image(width: int = 50, height: int = 40) -> Image.Image:
    return Image.new("RGB", (width, height), COLOUR)


def noise_image(width: int = 50, height: int = 40) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def normalised_colour(mean, std) -> torch.Tensor:
    """(v - mean) / std of COLOUR, shaped (3, 1, 1)."""
    value = torch.tensor(COLOUR, dtype=torch.float32) / 255
    return ((value - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1)


def test_the_crop_keeps_the_weights_resize_ratio():
    resnet = of(ResNet18_Weights.DEFAULT)
    assert resnet.at_size(112) == Preprocessing(112, 128, resnet.mean, resnet.std, resnet.interpolation)
    assert of(ResNet50_Weights.IMAGENET1K_V2).at_size(112).resize_size == 116  # resize 232, crop 224
    assert ODD.at_size(40).resize_size == 60  # 30/20 ratio
    assert ODD.at_size(None) is ODD and ODD.at_size(20) is ODD


@pytest.mark.parametrize("weights", [ResNet18_Weights.DEFAULT, ResNet50_Weights.IMAGENET1K_V2,
                                     EfficientNet_B0_Weights.DEFAULT, ViT_B_16_Weights.DEFAULT])
@pytest.mark.parametrize("image_size", [None, 64])
def test_eval_transform_equals_torchvisions_preset(weights, image_size):
    preprocessing = of(weights).at_size(image_size)
    reference = weights.transforms(crop_size=preprocessing.crop_size, resize_size=preprocessing.resize_size)
    image = noise_image(300, 200)
    assert torch.equal(preprocessing.eval_transform()(image), reference(image))


def test_the_weights_interpolation_is_kept():
    assert of(EfficientNet_B0_Weights.DEFAULT).interpolation == "bicubic"
    assert of(ResNet18_Weights.DEFAULT).interpolation == "bilinear"


def test_a_round_trip_through_plain_values_is_exact():
    preprocessing = of(EfficientNet_B0_Weights.DEFAULT).at_size(96)
    plain = preprocessing.to_dict()
    assert all(isinstance(value, (int, float, str, list)) for value in plain.values())  # weights_only-loadable
    assert Preprocessing.from_dict(plain) == preprocessing


def test_named_weights_bring_their_own_and_files_or_none_use_the_default():
    assert preprocessing_for("resnet50", "IMAGENET1K_V1").resize_size == 256
    assert preprocessing_for("resnet50", "IMAGENET1K_V2").resize_size == 232
    assert preprocessing_for("resnet50", None) == preprocessing_for("resnet50", "DEFAULT")
    assert preprocessing_for("resnet50", "/some/file.pth") == preprocessing_for("resnet50", "DEFAULT")


def test_eval_output_is_the_normalised_crop():
    out = ODD.at_size(16).eval_transform()(constant_image())
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    torch.testing.assert_close(out, normalised_colour(ODD.mean, ODD.std).expand(3, 16, 16))
    resnet = of(ResNet18_Weights.DEFAULT).at_size(32).eval_transform()(constant_image())
    expected = normalised_colour([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(resnet, expected.expand(3, 32, 32))


@pytest.mark.parametrize("size", [16, 24])
def test_train_augmented_output_is_normalised_crop(size: int):
    transform = ODD.at_size(size).train_transform([transforms.RandomResizedCrop(size),
                                                   transforms.RandomHorizontalFlip()])
    out = transform(constant_image())  # a constant image stays constant under crop and flip
    assert out.dtype == torch.float32 and out.shape == (3, size, size)
    torch.testing.assert_close(out, normalised_colour(ODD.mean, ODD.std).expand(3, size, size))


def test_train_augmentation_is_applied():
    torch.manual_seed(0)
    transform = of(ResNet18_Weights.DEFAULT).at_size(16).train_transform(
        [transforms.RandomResizedCrop(16, scale=(0.05, 0.2))])
    image = noise_image()
    assert not torch.equal(transform(image), transform(image))


@pytest.mark.parametrize("augment", [[], None])
def test_train_without_augmentation_equals_eval(augment):
    image = noise_image(70, 45)
    preprocessing = of(ResNet18_Weights.DEFAULT).at_size(32)
    assert torch.equal(preprocessing.train_transform(augment)(image), preprocessing.eval_transform()(image))


def test_denormalize_inverts_the_normalisation():
    images = torch.rand(2, 3, 8, 8)
    normalised = transforms.Normalize(ODD.mean, ODD.std)(images)
    assert torch.allclose(ODD.denormalize()(normalised), images, atol=1e-5, rtol=0)
    assert torch.allclose(ODD.denormalize()(normalised[0]), images[0], atol=1e-5, rtol=0)  # one image too
