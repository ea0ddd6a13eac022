"""Preprocessing: the eval resize/crop and normalisation of a model, and the training augmentation on top.

One ``Preprocessing`` is built per run from the backbone's weights and ``data.image_size``, stored
in the checkpoint (``to_dict``), and used by training, the image cache, TensorBoard pictures,
predict, evaluate and export, so a reloaded model sees exactly what it was validated with.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision import transforms
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``, scale to [0, 1], normalise."""

    crop_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = InterpolationMode.BILINEAR.value

    @classmethod
    def from_preset(cls, preset: Any) -> "Preprocessing":
        """From a torchvision weights' ``weights.transforms()`` (read through its public attributes)."""
        return cls(int(preset.crop_size[0]), int(preset.resize_size[0]), tuple(map(float, preset.mean)),
                   tuple(map(float, preset.std)), InterpolationMode(preset.interpolation).value)

    def at_size(self, image_size: int | None) -> "Preprocessing":
        """The same preprocessing with the crop set to ``image_size``.

        The resize keeps the resize/crop ratio (256/224 for most ImageNet weights), so a smaller or
        larger crop sees the same field of view the weights were evaluated with.
        """
        if image_size is None or image_size == self.crop_size:
            return self
        resize = round(image_size * self.resize_size / self.crop_size)
        return Preprocessing(image_size, resize, self.mean, self.std, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for hyper-parameters that load with ``torch.load(weights_only=True)``."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Preprocessing":
        return cls(int(values["crop_size"]), int(values["resize_size"]), tuple(values["mean"]), tuple(values["std"]),
                   values.get("interpolation", InterpolationMode.BILINEAR.value))

    @property
    def input_shape(self) -> list[int]:
        """``[3, H, W]`` of the tensors the eval transform produces."""
        return [3, self.crop_size, self.crop_size]

    def _to_normalised_tensor(self) -> list[Callable]:
        return [transforms.PILToTensor(), transforms.ConvertImageDtype(torch.float32),
                transforms.Normalize(mean=self.mean, std=self.std)]

    def eval_transform(self) -> transforms.Compose:
        """PIL image -> normalised float tensor, as torchvision's weights presets compute it."""
        resize = transforms.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation),
                                   antialias=True)
        return transforms.Compose([resize, transforms.CenterCrop(self.crop_size), *self._to_normalised_tensor()])

    def train_transform(self, augment: Sequence[Callable] | None) -> Callable:
        """``augment`` followed by the normalisation; no augmentation means the eval transform.

        ``augment`` must end at the crop size (``RandomResizedCrop(image_size)`` does), so batches stack.
        """
        if not augment:
            return self.eval_transform()
        return transforms.Compose([*augment, *self._to_normalised_tensor()])

    def denormalize(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The inverse of the normalisation, ``images * std + mean``, for showing inputs as pictures.

        Takes (C, H, W) or (N, C, H, W) tensors on any device; values are not clamped to [0, 1].
        """
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

        def undo(images: torch.Tensor) -> torch.Tensor:
            return images * std.to(images) + mean.to(images)

        return undo
