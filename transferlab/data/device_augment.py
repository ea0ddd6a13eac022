"""Training augmentation on the device the model trains on, after the batch was copied there.

On a GPU the loader processes are often what limits training: cropping, resizing, flipping and
normalising every image takes CPU time the GPU spends waiting. With ``data.device_augment`` on,
the loader only serves each training image as decoded (a uint8 tensor, from the image cache
where it is there), the batch is copied to the device as a list of such tensors, and there
``DeviceAugment`` runs the configured ``data.augment`` on each image, stacks the crops, scales
them to [0, 1] and normalises them. The transforms are the same torchvision objects, drawing their
random parameters (crop box, flip) from the same generator calls, on tensors instead of PIL images:
the crops and flips follow the same distributions (tested); the resized pixels differ slightly,
as torchvision's tensor and PIL resizing do.
"""

import logging
from collections.abc import Callable, Sequence

import torch
from torchvision import transforms

from transferlab.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_AUGMENT_SETTINGS = ("auto", True, False)


def use_device_augment(setting: bool | str, on_gpu: bool, augmented: bool, caches_features: bool) -> bool:
    """Whether ``data.device_augment`` applies: ``auto`` on a GPU, ``true`` anywhere; never without augmentation
    (the eval transform is deterministic) or with the feature cache (which augments once, before training)."""
    if setting not in DEVICE_AUGMENT_SETTINGS:
        raise ConfigError(f"data.device_augment={setting!r} is not one of auto, true, false.")
    if setting is True and caches_features:
        log.info("data.device_augment=true does not apply: the feature cache augments the training images once, "
                 "before training (data.cache_features=false augments them on the device every epoch).")
    if not augmented or caches_features:
        return False
    return on_gpu if setting == "auto" else bool(setting)


def uint8_tensor() -> Callable:
    """What the loader does per training image with device augmentation: PIL image -> uint8 (3, H, W) tensor."""
    return transforms.PILToTensor()


def collate_images(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Images of different sizes cannot be stacked: a list of them, and the labels as one tensor."""
    return [image for image, _ in batch], torch.tensor([label for _, label in batch])


class DeviceAugment:
    """``augment`` applied to each uint8 image of a list on its device, then stacked, scaled to [0, 1] and normalised
    with ``mean`` and ``std``: the same result, up to resizing, as the loader's ``augment`` + normalisation."""

    def __init__(self, augment: Sequence[Callable], mean: Sequence[float], std: Sequence[float]) -> None:
        self.augment = transforms.Compose(list(augment))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        crops = torch.stack([self.augment(image) for image in images])
        scaled = crops.to(torch.float32).div_(255)  # transforms.ConvertImageDtype(torch.float32) of uint8
        return scaled.sub_(self.mean.to(scaled.device)).div_(self.std.to(scaled.device))
