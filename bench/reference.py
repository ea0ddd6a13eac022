"""The yardstick: a plain-PyTorch transfer-learning loop in the style of the PyTorch tutorial.

Two ``ImageFolder`` splits (``train/``, ``val/``), a ``DataLoader`` each, a train and a val phase
per epoch, cross-entropy, SGD (lr 0.001, momentum 0.9), StepLR (7 epochs, x0.1), and the best
val weights kept in memory with ``copy.deepcopy``. ``train_reference`` times it the way
``bench/compare.py`` times transferlab.

Besides the tutorial's three modes, ``partial`` (only the top K stages and the new classifier train; the rest in
eval mode) and ``gradual`` (frozen until an epoch, then the whole backbone at a lower rate), written as plainly,
for ``bench/accuracy.py``. A backbone is a torchvision ResNet or VGG, or a timm EfficientNet (``source="timm"``:
its ``blocks.N`` are the stages, its stem belongs to the first and ``conv_head``/``bn2`` to the last).
"""

import copy
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

MODES = ("finetune", "feature_extract", "scratch")
PLAIN_MODES = (*MODES, "partial", "gradual")
FROZEN_AT_START = ("feature_extract", "partial", "gradual")
PHASES = ("train", "val")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TUTORIAL_RESIZE_RATIO = 256 / 224  # the tutorial's Resize(256) + CenterCrop(224)


def data_transforms(image_size: int = 224, resize_ratio: float = TUTORIAL_RESIZE_RATIO,
                    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                    interpolation: str = "bilinear") -> dict[str, transforms.Compose]:
    """Train: random resized crop and flip; val: resize to ``image_size * resize_ratio`` and centre crop.

    ``mean``, ``std`` and ``interpolation`` are the weights' (ImageNet's and bilinear for torchvision's ResNets).
    """
    normalize = transforms.Normalize(mean, std)
    resample = transforms.InterpolationMode(interpolation)
    return {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(image_size, interpolation=resample),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]),
        "val": transforms.Compose([
            transforms.Resize(round(image_size * resize_ratio), interpolation=resample),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]),
    }


def classifier_path(model: nn.Module) -> str:
    """Attribute path of the last classification layer: ``fc`` (ResNet family) or ``classifier.<last>`` (VGG)."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    if isinstance(model, models.VGG):
        return f"classifier.{len(model.classifier) - 1}"
    raise ValueError(f"{type(model).__name__}: only ResNet-style (fc) and VGG (classifier[-1]) backbones "
                     "are supported.")


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Swap the last classification layer for a new ``nn.Linear`` with ``num_classes`` outputs; return its path."""
    path = classifier_path(model)
    if path == "fc":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return path


def build_model(backbone: str, num_classes: int, mode: str, weights_file: str | Path | None = None,
                source: str = "torchvision") -> tuple[nn.Module, str]:
    """The backbone with a new classifier, set up for ``mode``; returns the model and its classifier's path.

    Every mode but ``scratch`` starts from ``weights_file`` (a state dict of the torchvision or timm network,
    ``source``) when given; ``scratch`` always starts from random init. In ``feature_extract`` (and at the start of
    ``partial`` and ``gradual``) every backbone parameter is frozen before the classifier is replaced, so only the
    new classifier trains.
    """
    if mode not in PLAIN_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(PLAIN_MODES)}.")
    if source == "timm":
        import timm

        model = timm.create_model(backbone, pretrained=False)
    else:
        model = models.get_model(backbone, weights=None)
    if weights_file is not None and mode != "scratch":
        model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    if mode in FROZEN_AT_START:
        for param in model.parameters():
            param.requires_grad = False
    if source == "timm":  # timm's own head replacement: a new Linear where pretrained_cfg says the classifier is
        model.reset_classifier(num_classes)
        return model, model.pretrained_cfg["classifier"]
    return model, replace_classifier(model, num_classes)


def top_stages(model: nn.Module, count: int) -> list[nn.Module]:
    """The modules of the top ``count`` stages: a ResNet's layer1..layer4, a timm EfficientNet's blocks.N (its
    conv_head and bn2, after the last block, belong to the last stage)."""
    if hasattr(model, "blocks"):
        stages = [[block] for block in model.blocks]
        stages[-1] += [model.conv_head, model.bn2]
    else:
        stages = [[model.layer1], [model.layer2], [model.layer3], [model.layer4]]
    return [module for stage in stages[len(stages) - count:] for module in stage]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (DataLoader worker seeds derive from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_reference(
    data_root: str | Path,
    backbone: str = "resnet18",
    mode: str = "finetune",
    weights_file: str | Path | None = None,
    epochs: int = 25,
    batch_size: int = 32,
    num_workers: int = 2,
    image_size: int = 224,
    seed: int = 42,
    device: str = "cpu",
    resize_ratio: float = TUTORIAL_RESIZE_RATIO,
    verbose: bool = True,
    source: str = "torchvision",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    interpolation: str = "bilinear",
    trainable_stages: int = 2,
    unfreeze_at_epoch: int = 5,
    backbone_lr_ratio: float = 1.0,
) -> dict[str, Any]:
    """Train with the tutorial loop and return its timings and accuracies.

    Returned keys: ``wall_s`` (the whole call, data set creation included), ``epoch_s`` (wall
    seconds of each epoch, train and val phases), ``train_s`` (seconds in train phases),
    ``train_images`` and ``train_images_per_s`` (train images processed / ``train_s``),
    ``best_val_acc``, ``best_epoch`` (from 0, the first epoch reaching the best accuracy),
    ``final_val_acc``, ``history`` (per-epoch losses and accuracies), ``params_trainable`` and
    ``params_total``. The best val weights are loaded into the model before returning, as in the
    tutorial. ``partial`` trains the top ``trainable_stages``; ``gradual`` unfreezes the whole backbone at
    ``unfreeze_at_epoch``; both train the backbone at ``backbone_lr_ratio`` x the rate.
    """
    started = time.perf_counter()
    torch_device = torch.device(device)
    seed_everything(seed)
    tfms = data_transforms(image_size, resize_ratio, mean, std, interpolation)
    image_datasets = {phase: datasets.ImageFolder(str(Path(data_root) / phase), tfms[phase]) for phase in PHASES}
    dataloaders = {
        phase: DataLoader(image_datasets[phase], batch_size=batch_size, shuffle=phase == "train",
                          num_workers=num_workers)
        for phase in PHASES
    }
    dataset_sizes = {phase: len(image_datasets[phase]) for phase in PHASES}
    class_names = image_datasets["train"].classes

    model, head_path = build_model(backbone, len(class_names), mode, weights_file, source)
    model = model.to(torch_device)
    head = model.get_submodule(head_path)
    # What trains in train mode while the rest of a partly frozen model stays in eval mode (see below).
    training = [head, *(top_stages(model, trainable_stages) if mode == "partial" else [])]
    for param in (p for module in training for p in module.parameters()):
        param.requires_grad = True
    criterion = nn.CrossEntropyLoss()
    # feature_extract: only the new classifier is handed to the optimizer, as in the tutorial. partial and gradual:
    # the backbone's parameters in a group of their own at the lower rate (a frozen one has no gradient, so SGD
    # leaves it alone until it is unfrozen).
    head_ids = {id(p) for p in head.parameters()}
    backbone_params = [p for p in model.parameters() if id(p) not in head_ids]
    if mode == "feature_extract":
        params = head.parameters()
    elif mode in FROZEN_AT_START:
        params = [{"params": backbone_params, "lr": 0.001 * backbone_lr_ratio}, {"params": list(head.parameters())}]
    else:
        params = model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)

    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc, best_epoch = 0.0, None
    epoch_s: list[float] = []
    history: list[dict[str, float]] = []
    train_s, train_images = 0.0, 0

    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        record: dict[str, float] = {"epoch": epoch}
        for phase in PHASES:
            phase_started = time.perf_counter()
            if phase == "train":
                if mode == "gradual" and epoch == unfreeze_at_epoch:  # the whole backbone joins from here
                    for param in backbone_params:
                        param.requires_grad = True
                    training = [model]
                model.train()
                if mode in FROZEN_AT_START:
                    # The tutorial keeps the whole model in train mode here, so BatchNorm layers of the
                    # frozen backbone still normalise with batch statistics and update their running
                    # statistics. transferlab puts a frozen backbone in eval mode (its BatchNorm
                    # statistics never change); to compare like with like, do the same: everything
                    # but the new classifier (and what else trains) in eval mode.
                    model.eval()
                    for module in training:
                        module.train()
            else:
                model.eval()

            running_loss = 0.0
            running_corrects = 0
            for inputs, labels in dataloaders[phase]:
                inputs = inputs.to(torch_device)
                labels = labels.to(torch_device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += (preds == labels).sum()
            if phase == "train":
                scheduler.step()

            epoch_loss = running_loss / dataset_sizes[phase]
            epoch_acc = float(running_corrects) / dataset_sizes[phase]
            record[f"{phase}_loss"], record[f"{phase}_acc"] = epoch_loss, epoch_acc
            if phase == "train":
                _synchronize(torch_device)
                train_s += time.perf_counter() - phase_started
                train_images += dataset_sizes["train"]
            elif epoch_acc > best_acc:
                best_acc, best_epoch = epoch_acc, epoch
                best_model_wts = copy.deepcopy(model.state_dict())
        _synchronize(torch_device)
        epoch_s.append(time.perf_counter() - epoch_started)
        history.append(record)
        if verbose:
            print(f"[reference] epoch {epoch}/{epochs - 1}: train loss {record['train_loss']:.4f} "
                  f"acc {record['train_acc']:.4f}, val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}, "
                  f"{epoch_s[-1]:.1f} s", flush=True)

    model.load_state_dict(best_model_wts)
    return {
        "implementation": "reference",
        "backbone": backbone,
        "mode": mode,
        "weights": str(weights_file) if weights_file is not None and mode != "scratch" else None,
        "classes": class_names,
        "train_size": dataset_sizes["train"],
        "val_size": dataset_sizes["val"],
        "wall_s": time.perf_counter() - started,
        "epoch_s": epoch_s,
        "train_s": train_s,
        "train_images": train_images,
        "train_images_per_s": train_images / train_s if train_s else None,
        "best_val_acc": best_acc if best_epoch is not None else None,
        "best_epoch": best_epoch,
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params_total": sum(p.numel() for p in model.parameters()),
        "history": history,
    }
