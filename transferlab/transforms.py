"""Preprocessing taken from the backbone's weights: eval resize/crop, mean/std, augmentation."""

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms
from torchvision.models import WeightsEnum
from torchvision.transforms._presets import ImageClassification


def eval_transform(weights: WeightsEnum, image_size: int | None = None) -> ImageClassification:
    """The weights' own eval preprocessing, with the centre crop set to ``image_size``.

    The resize keeps torchvision's resize/crop ratio (256/224 for most ImageNet weights), so a
    smaller or larger crop sees the same field of view the weights were evaluated with.
    """
    preset = weights.transforms()
    if image_size is None:
        return preset
    resize = round(image_size * preset.resize_size[0] / preset.crop_size[0])
    return weights.transforms(crop_size=image_size, resize_size=resize)


def train_transform(
    weights: WeightsEnum, image_size: int | None, augment: Sequence[Callable] | None
) -> Callable:
    """Augmentation followed by the weights' normalisation; no augmentation means eval preprocessing.

    ``augment`` must end at the crop size (``RandomResizedCrop(image_size)`` does), so batches stack.
    """
    if not augment:
        return eval_transform(weights, image_size)
    preset = weights.transforms()
    return transforms.Compose(
        [
            *augment,
            transforms.PILToTensor(),
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize(mean=preset.mean, std=preset.std),
        ]
    )



def denormalize(weights: WeightsEnum) -> Callable[[torch.Tensor], torch.Tensor]:
    """The inverse of the weights' normalisation, ``images * std + mean``, for showing inputs as pictures.

    Takes (C, H, W) or (N, C, H, W) tensors on any device; values are not clamped to [0, 1].
    """
    preset = weights.transforms()
    mean = torch.tensor(preset.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(preset.std, dtype=torch.float32).view(-1, 1, 1)

    def undo(images: torch.Tensor) -> torch.Tensor:
        return images * std.to(images) + mean.to(images)

    return undo
