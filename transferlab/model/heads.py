"""The classification head that sits on the backbone's features."""

from collections.abc import Sequence

from torch import nn


def build_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Sequential:
    """An MLP: for each hidden width Linear -> ReLU -> Dropout, then the final Linear.

    ``hidden=[]`` is one linear layer (the classic ResNet recipe); ``hidden=[4096, 4096]`` with
    ``dropout=0.5`` is VGG's own 3-layer classifier. With no hidden layer, ``dropout`` applies to
    the features before the linear layer.
    """
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {num_classes}.")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    if not hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
