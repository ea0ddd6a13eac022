"""The LightningModule: a pretrained backbone (torchvision or timm), a new head, cross-entropy, accuracy."""

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from transferlab.errors import ConfigError
from transferlab.model.backbones import DEFAULT_SOURCE, BackboneSpec
from transferlab.model.heads import build_head
from transferlab.model.modes import PlannedStage, get_mode, plan_stages

CLASS_WEIGHTS = ("balanced",)
# What the optimizer and scheduler ``_target_`` of hyper-parameters read from a checkpoint may name: a class
# directly in one of these modules, of that kind. A checkpoint loads without running code (weights_only), but
# ``instantiate`` calls whatever its hyper-parameters name; a Hydra config the user composed is trusted as it is.
CHECKPOINT_TARGETS = {"optimizer": (torch.optim, torch.optim.Optimizer),
                      "scheduler": (torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)}


def class_weights(setting: str | None, counts: list[int]) -> list[float] | None:
    """Loss weights per class: ``None``, or for ``"balanced"`` N / (K * count_k) (inverse frequency, mean 1
    per image)."""
    if setting is None:
        return None
    if setting not in CLASS_WEIGHTS:
        raise ConfigError(f"loss.class_weights={setting!r} is not one of: null, {', '.join(CLASS_WEIGHTS)}.")
    total, classes = sum(counts), len(counts)
    return [total / (classes * count) for count in counts]


class TransferClassifier(pl.LightningModule):
    """A classifier made of ``self.backbone`` (a network without its classifier) and ``self.head``.

    Arguments are primitives, so ``TransferClassifier.load_from_checkpoint(path, weights=None)``
    rebuilds it without Hydra or a download. ``source`` is where the backbone comes from (``torchvision``,
    ``timm``: ``transferlab.model.backbones``; checkpoints without it are torchvision's). ``weights`` is what
    the backbone starts from (none when the ``mode`` starts from random init); ``preprocessing``
    (``Preprocessing.to_dict()``) is the input pipeline the model is trained and validated with, kept in the
    checkpoint; by default that of ``weights`` at its native size. ``optimizer`` and ``scheduler`` are Hydra
    ``_target_`` configs (partials) that ``configure_optimizers`` completes with the parameters. ``channels_last``
    stores the backbone's weights and its input batches NHWC, which convolutions
    on tensor-core GPUs (and some CPUs) run faster.
    """

    def __init__(
        self,
        backbone: str,
        class_names: list[str],
        weights: str | None = "DEFAULT",
        classifier: str | None = None,
        head_hidden: list[int] | None = None,
        head_dropout: float = 0.0,
        mode: str = "finetune",
        backbone_lr_ratio: float = 1.0,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        preprocessing: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        channels_last: bool = False,
        stages: list[str] | None = None,
        mode_settings: dict[str, Any] | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> None:
        super().__init__()
        # save_hyperparameters() reads the arguments' current values: the weights actually started
        # from, and the preprocessing actually used, are what the checkpoint records.
        weights = get_mode(mode).initial_weights(weights)
        spec = BackboneSpec(backbone, weights, classifier, tuple(stages) if stages else None, source)
        preprocessing = preprocessing or spec.preprocessing().to_dict()
        self.save_hyperparameters()
        built = spec.build(class_names)
        self.backbone = built.network
        self.head = build_head(built.num_features, len(class_names), head_hidden or [], head_dropout)
        if built.head_state is not None:
            self.head.load_state_dict(built.head_state)
        # Class weights (a buffer of the loss, so it moves with the model) apply to the training loss
        # only; val/loss stays the plain cross-entropy, comparable between weighted and unweighted runs.
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.val_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes=len(class_names), average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=len(class_names), average="micro")
        if channels_last:
            self.set_channels_last(True)
        schedule = get_mode(mode).schedule(mode_settings)
        layer_decay = (optimizer or {}).get("layer_decay", 1.0)
        found = spec.find_stages(self.backbone, strict=schedule.per_stage or layer_decay != 1)
        self.stage_plan: list[PlannedStage] = plan_stages(found, schedule, backbone_lr_ratio, layer_decay)

    def set_channels_last(self, enabled: bool) -> None:
        """Store the backbone's weights, and pass it its input batches, NHWC (``enabled``) or NCHW."""
        self.hparams.channels_last = enabled
        self.backbone.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's output for ``images``: the head's input."""
        if self.hparams.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        if isinstance(features, tuple):  # inception/googlenet return (logits, aux_logits) in train mode
            features = features[0]
        return features

    def classify(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (N, C, H, W), or of cached backbone features (N, D)
        (``transferlab.features``)."""
        return self.head(inputs) if inputs.ndim == 2 else self(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        logits = self.classify(inputs)
        loss = self.criterion(logits, labels)
        self.train_acc(logits, labels)
        # sync_dist: the epoch mean over all DDP processes (averaged once, at the epoch's end)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Logs val/loss and val/acc; returns the predicted class of each image for callbacks."""
        inputs, labels = batch
        logits = self.classify(inputs)
        self.val_acc(logits, labels)
        self.log("val/loss", self.val_criterion(logits, labels), on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(labels), prog_bar=True)
        return logits.argmax(dim=1)

    def param_groups(self) -> list[dict[str, Any]]:
        """The backbone's groups of trainable parameters (``stage_plan``), then ``head``, with their rate scale.

        A backbone group exists even while its stages are frozen (empty), unless they never train: see
        ``transferlab.model.modes``.
        """
        groups: dict[str, dict[str, Any]] = {}
        for planned in self.stage_plan:
            if planned.group is not None:
                group = groups.setdefault(planned.group, {"name": planned.group, "params": [],
                                                          "lr_scale": planned.lr_scale})
                group["params"] += [p for p in planned.stage.parameters(self.backbone) if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return [*groups.values(), {"name": "head", "params": head, "lr_scale": 1.0}]

    # True when the hyper-parameters come from a checkpoint (load_from_checkpoint, checkpoint.load_classifier)
    # rather than from the user's config: configure_optimizers then instantiates only CHECKPOINT_TARGETS.
    hparams_from_checkpoint = False

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this with no trainer only from load_from_checkpoint, which built the module from the
        # checkpoint's hyper-parameters; a trainer's resume (ckpt_path=) restores tensors into a module the
        # config built, and calls it with the trainer attached.
        if self._trainer is None:
            self.hparams_from_checkpoint = True

    def configure_optimizers(self) -> Any:
        groups = self.param_groups()
        optimizer_config = {key: value for key, value in (self.hparams.optimizer or {}).items() if key != "layer_decay"}
        optimizer_partial = instantiate(self._trusted("optimizer", optimizer_config)
                                        or {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-3})
        base_lr = optimizer_partial.keywords["lr"]
        for group in groups:
            group["lr"] = base_lr * group["lr_scale"]
        optimizer = optimizer_partial(groups)
        if not self.hparams.scheduler:
            return optimizer
        scheduler_config = dict(self.hparams.scheduler)
        interval = scheduler_config.pop("interval", "epoch")
        scheduler_partial = instantiate(self._trusted("scheduler", scheduler_config))
        scheduler = scheduler_partial(optimizer, **self._runtime_scheduler_args(scheduler_partial, groups))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def _runtime_scheduler_args(self, scheduler_partial: Any, groups: list[dict[str, Any]]) -> dict[str, Any]:
        """What only the running trainer knows: OneCycle's total steps and per-group peak rates."""
        accepted = inspect.signature(scheduler_partial.func).parameters
        given = scheduler_partial.keywords
        runtime: dict[str, Any] = {}
        if "total_steps" in accepted and given.get("total_steps") is None:
            runtime["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if "max_lr" in accepted and isinstance(given.get("max_lr"), (int, float)):
            runtime["max_lr"] = [given["max_lr"] * group["lr_scale"] for group in groups]
        return runtime

    def _trusted(self, kind: str, config: Any) -> Any:
        """``config`` unchanged, unless it comes from a checkpoint and names a target outside CHECKPOINT_TARGETS."""
        if not self.hparams_from_checkpoint or not config:
            return config
        module, base = CHECKPOINT_TARGETS[kind]
        for where, target in _targets(config, f"hparams.{kind}"):
            name = target.removeprefix(f"{module.__name__}.") if isinstance(target, str) else ""
            found = getattr(module, name, None) if name.isidentifier() else None
            if where != f"hparams.{kind}._target_" or not (isinstance(found, type) and issubclass(found, base)):
                example = "SGD', '_partial_': True, 'lr': 0.01" if kind == "optimizer" else "StepLR', 'step_size': 10"
                article = "an" if kind == "optimizer" else "a"
                raise ConfigError(
                    f"The checkpoint's {where}={target!r} does not name {article} {kind} class of "
                    f"{module.__name__}, so it was not instantiated: any other target could run code, and a "
                    f"checkpoint's hyper-parameters may only name {module.__name__}.<{base.__name__} subclass>. If "
                    "you trust the checkpoint, set model.hparams_from_checkpoint = False; otherwise set "
                    f"model.hparams.{kind} to a config you trust, e.g. {{'_target_': '{module.__name__}.{example}}}."
                )
        return config


def _targets(config: Any, where: str) -> list[tuple[str, Any]]:
    """Every ``_target_`` in a (nested) Hydra config, with its dotted place: Hydra instantiates nested ones too."""
    if isinstance(config, Mapping):
        items = config.items()
    elif isinstance(config, Sequence) and not isinstance(config, str | bytes):
        items = enumerate(config)
    else:
        return []
    found = []
    for key, value in items:
        place = f"{where}.{key}"
        found += [(place, value)] if key == "_target_" else _targets(value, place)
    return found
