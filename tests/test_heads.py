"""Tests for transferlab.heads.build_head."""

import pytest
import torch
from torch import nn

from transferlab.model.heads import build_head


def describe(head: nn.Sequential) -> list[tuple]:
    """Each layer as (type, sizes): Linear -> in/out, Dropout -> p, ReLU -> ()."""
    layers = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            layers.append(("Linear", layer.in_features, layer.out_features))
        elif isinstance(layer, nn.Dropout):
            layers.append(("Dropout", layer.p))
        else:
            layers.append((type(layer).__name__,))
    return layers


def test_no_hidden_is_one_linear():
    assert describe(build_head(512, 7, [])) == [("Linear", 512, 7)]


def test_vgg16_classifier():
    with torch.device("meta"):  # structure only: skip initialising 120M parameters
        head = build_head(25088, 10, [4096, 4096], dropout=0.5)
    assert describe(head) == [
        ("Linear", 25088, 4096), ("ReLU",), ("Dropout", 0.5),
        ("Linear", 4096, 4096), ("ReLU",), ("Dropout", 0.5),
        ("Linear", 4096, 10),
    ]


def test_hidden_without_dropout_has_no_dropout_layer():
    assert describe(build_head(8, 3, [5])) == [("Linear", 8, 5), ("ReLU",), ("Linear", 5, 3)]


def test_dropout_without_hidden_comes_before_linear():
    assert describe(build_head(512, 4, [], dropout=0.2)) == [("Dropout", 0.2), ("Linear", 512, 4)]


def test_output_shape():
    head = build_head(32, 3, [16, 8], dropout=0.1)
    assert head(torch.randn(5, 32)).shape == (5, 3)


@pytest.mark.parametrize("num_classes", [1, 0])
def test_fewer_than_two_classes_raises(num_classes: int):
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_head(16, num_classes)
