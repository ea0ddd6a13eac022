"""Timing a few steps of a model on random batches: how fast a precision and a memory format are on this machine.

The model is copied, the batches come from a generator of their own and the global random state is restored
afterwards, so timing changes nothing of the run that follows (a resumed run stays bit-identical).
"""

import contextlib
import copy
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16,
                   "16": torch.float16}


@dataclass(frozen=True)
class StepShape:
    """What one step processes: a batch of square RGB images, trained (forward, backward, SGD step) or not."""

    batch_size: int
    image_size: int
    train: bool


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``trainer.precision`` (``bf16-mixed``: bfloat16), None for full precision."""
    return AUTOCAST_DTYPES.get(str(precision))


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
        dtype = autocast_dtype(precision)

        def step() -> float:
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), \
                    torch.set_grad_enabled(shape.train):
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
