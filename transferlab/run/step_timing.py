"""Timing a few steps of a model on random batches: how fast a precision and a memory format are on this machine.

The model is copied, the batches come from a generator of their own and the global random state is restored
afterwards, so timing changes nothing of the run that follows (a resumed run stays bit-identical).
"""

import contextlib
import copy
import statistics
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

MIXED_PRECISIONS = ("16-mixed", "bf16-mixed")  # Lightning's trainer.precision values that run under autocast


@dataclass(frozen=True)
class StepShape:
    """What one step processes: a batch of square RGB images, trained (forward, backward, SGD step) or not."""

    batch_size: int
    image_size: int
    train: bool


def is_mixed(precision: str) -> bool:
    """Whether a Lightning ``trainer.precision`` runs the forward pass under autocast."""
    return str(precision) in MIXED_PRECISIONS


def forward_context(precision: str, device: torch.device) -> AbstractContextManager:
    """What Lightning wraps a forward pass in at ``precision``: its ``MixedPrecision`` plugin's autocast, or nothing."""
    return MixedPrecision(precision, device.type).forward_context() if is_mixed(precision) else contextlib.nullcontext()


@contextlib.contextmanager
def _untouched_random_state(device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        yield


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model: nn.Module, shape: StepShape, device: torch.device, precision: str,
                      channels_last: bool, min_steps: int = 2, max_steps: int = 10, max_seconds: float = 10.0,
                      classes: int = 2) -> float:
    """Images per second of a copy of ``model`` at ``precision`` (a Lightning ``trainer.precision``) and memory
    format, after one warm-up step: the median of ``min_steps`` to ``max_steps`` timed steps, more while under
    ``max_seconds``.

    ``model`` maps a batch (N, 3, H, W) to logits (N, classes); with ``shape.train`` a step is forward,
    cross-entropy, backward and an SGD step on the copy's trainable parameters, otherwise a forward in eval mode
    without gradients.
    """
    with _untouched_random_state(device):
        timed = copy.deepcopy(model).to(device)
        timed.train(shape.train)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if hasattr(timed, "set_channels_last"):  # a TransferClassifier: its forward converts its input batches too
            timed.set_channels_last(channels_last)
        else:
            timed.to(memory_format=memory_format)
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(shape.batch_size, 3, shape.image_size, shape.image_size, generator=generator)
        images = images.to(device).contiguous(memory_format=memory_format)
        labels = torch.randint(classes, (shape.batch_size,), generator=generator).to(device)
        trainable = [parameter for parameter in timed.parameters() if parameter.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=1e-3) if shape.train and trainable else None

        def step() -> float:
            started = time.perf_counter()
            with forward_context(precision, device), torch.set_grad_enabled(shape.train):
                logits = timed(images)
            if optimizer is not None:
                nn.functional.cross_entropy(logits.float(), labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            _synchronize(device)
            return time.perf_counter() - started

        step()
        seconds: list[float] = []
        budget_end = time.perf_counter() + max_seconds
        while len(seconds) < min_steps or (len(seconds) < max_steps
                                           and time.perf_counter() + statistics.median(seconds) < budget_end):
            seconds.append(step())
    return shape.batch_size / statistics.median(seconds)
