"""Time transferlab against the plain-PyTorch tutorial loop (``bench/reference.py``), in one process.

    python bench/compare.py --data ../shared/datasets/hymenoptera_data --mode feature_extract \\
        --epochs 25 --image-size 224 --batch-size 32 --workers 2 [--backbone resnet18] [--weights FILE] \\
        [--device cpu] [--threads N] [--json out.json] [--skip-reference] [-- HYDRA_OVERRIDE ...]

Both sides get the same data folder, backbone, starting weights (a seeded random state dict
written to a temporary file unless ``--weights`` is given), mode, batch size, loader workers,
image size, epochs, seed and torch thread count. The reference runs first, then transferlab,
one after the other. Everything after ``--`` is passed to transferlab's Hydra config unchanged
(e.g. ``data.cache_features=false``). See docs/benchmarks.md.
"""

import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/compare.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

import lightning
import lightning.pytorch as pl
import torch
import torchvision
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from bench.reference import MODES, classifier_path, train_reference

CONFIG_DIR = REPO_ROOT / "conf"


class EpochTimer(Callback):
    """Per-epoch wall time of a Lightning run, measured like the reference's epochs.

    An epoch runs from its ``on_train_epoch_start`` to the next epoch's (the last one to
    ``on_train_end``), so it holds everything Lightning does for it: the train phase, the
    validation phase, and what comes after validation. That includes the checkpoint writes:
    with validation every epoch, ``ModelCheckpoint`` saves ``best.ckpt``/``last.ckpt`` in
    ``on_train_epoch_end``, but as a "monitoring" callback it runs after every ordinary
    callback's ``on_train_epoch_end`` (this one's included), so ending the clock there would
    leave the writes out. The reference keeps its best weights in memory (``copy.deepcopy``)
    instead; that copy is inside its epoch. ``to_val_end_s`` keeps the span from the epoch's start
    to this callback's ``on_validation_end`` (train + val, before checkpointing) for comparison.
    The sanity-check validation before the first epoch belongs to no epoch.
    """

    def __init__(self) -> None:
        self.epoch_s: list[float] = []
        self.to_val_end_s: list[float] = []
        self._started: float | None = None

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _close_epoch(self, now: float) -> None:
        if self._started is not None:
            self.epoch_s.append(now - self._started)
            self._started = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self._now(pl_module)
        self._close_epoch(now)
        self._started = now

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._started is not None:
            self.to_val_end_s.append(self._now(pl_module) - self._started)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(self._now(pl_module))


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The arguments before ``--`` (this script's) and after it (Hydra overrides for transferlab)."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(
        description="Time transferlab against the PyTorch tutorial's transfer-learning loop.",
        usage="%(prog)s --data DIR [options] [-- HYDRA_OVERRIDE ...]",
    )
    parser.add_argument("--data", required=True, help="image folder with train/ and val/ (one sub-folder per class)")
    parser.add_argument("--mode", choices=MODES, default="finetune")
    parser.add_argument("--backbone", default="resnet18", help="a torchvision ResNet or VGG name (default resnet18)")
    parser.add_argument("--weights", default=None,
                        help="torchvision state dict both sides start from (default: a seeded random init)")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, both sides")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both (default: torch's)")
    parser.add_argument("--json", default=None, help="write the settings, machine, results and table here")
    parser.add_argument("--skip-reference", action="store_true", help="run transferlab only")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), default=None,
                        help="a transferlab run named NAME with these space-separated Hydra overrides (after the "
                             "common ones after --); repeat for several, each compared with the one reference run")
    parser.add_argument("--no-model-alone", dest="model_alone", action="store_false",
                        help="skip timing the model alone on synthetic batches (the limit a run can reach)")
    parser.add_argument("--output-dir", default=None,
                        help="keep transferlab's run folder here (default: a temporary folder, deleted)")
    return parser.parse_args(own), overrides


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, usable cores, torch threads, library versions and the device used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores_available": cores,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "device": device,
        # other processes' load on the cores, at the start (1-minute average): timings under load are not comparable
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_random_weights(backbone: str, seed: int, path: Path) -> Path:
    """A seeded, randomly initialised state dict of ``backbone``: the same 'pretrained' weights for both sides."""
    torch.manual_seed(seed)
    torch.save(torchvision.models.get_model(backbone, weights=None).state_dict(), path)
    return path


def head_path(backbone: str) -> str:
    """Path of the layer the reference replaces, for transferlab's ``backbone.classifier``."""
    with torch.device("meta"):  # architecture only: no memory, no init cost
        return classifier_path(torchvision.models.get_model(backbone, weights=None))


def eval_resize_ratio(backbone: str) -> float:
    """transferlab's eval resize / crop ratio: that of the architecture's DEFAULT weights (256/224 for ResNet-18)."""
    preset = torchvision.models.get_model_weights(backbone).DEFAULT.transforms()
    return preset.resize_size[0] / preset.crop_size[0]


def accelerator(device: str) -> str:
    """Lightning's ``trainer.accelerator`` for a torch device string."""
    kind = device.split(":", 1)[0]
    return {"cuda": "gpu", "mps": "mps"}.get(kind, "cpu")


def hydra_value(value: str | Path) -> str:
    """A value for a Hydra override, quoted when it holds characters the override grammar reserves."""
    text = str(value)
    if re.fullmatch(r"[\w./~+\-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def backbone_overrides(backbone: str, weights: Path) -> list[str]:
    """transferlab's backbone settings for ``backbone`` (a torchvision or a timm name) from the ``weights`` file."""
    from transferlab.model.backbones import source_of

    if source_of(backbone) == "timm":  # timm's own head replacement: nothing to point at
        return ["backbone=timm", f"backbone.name={backbone}", f"backbone.weights={hydra_value(weights.resolve())}"]
    # the same layer the reference replaces (for VGG its last Linear, not transferlab's default whole classifier)
    return [f"backbone.name={backbone}", f"backbone.weights={hydra_value(weights.resolve())}",
            f"backbone.classifier={head_path(backbone)}"]


def transferlab_overrides(args: argparse.Namespace, weights: Path, output_dir: Path, extra: list[str]) -> list[str]:
    """Hydra overrides that give transferlab the reference's data, model, mode and loader settings."""
    return [
        "data=image_folder",  # the folder given, no download settings
        f"data.root={hydra_value(Path(args.data).resolve())}",
        *backbone_overrides(args.backbone, weights),
        f"mode={args.mode}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"data.image_size={args.image_size}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={accelerator(args.device)}",
        "trainer.devices=1",
        f"seed={args.seed}",
        f"paths.output_dir={hydra_value(output_dir.resolve())}",
        *extra,
    ]


def run_transferlab(args: argparse.Namespace, weights: Path, output_dir: Path, extra: list[str],
                    name: str = "transferlab") -> dict[str, Any]:
    """Compose the real ``conf/train.yaml`` with the shared settings and train; timings as the reference's."""
    # Imported here, so that --help and the reference run need nothing from transferlab.
    from transferlab.cli.train import train

    overrides = transferlab_overrides(args, weights, output_dir, extra)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    timer = EpochTimer()
    started = time.perf_counter()
    results = train(cfg, callbacks=[timer])
    wall_s = time.perf_counter() - started
    # train_images_per_s comes from results.json (transferlab.run.results.RunSummary): images of the training
    # batches / seconds from on_train_epoch_start to on_validation_start, summed over epochs. That span
    # holds the train loader's start, every training step (forward, backward, optimizer step) and the
    # per-step logging, as the reference's train phase holds its loader start, steps and scheduler.step().
    # Differences: transferlab's loader workers are persistent (started once, in epoch 0 and the
    # sanity check), the reference's are started anew for every phase, as in the tutorial; and with
    # data.cache_images (transferlab's default) the images were decoded once during setup, outside this
    # clock, so its train phases crop in-memory images (the same pixels) instead of decoding JPEGs.
    return {
        "implementation": name,
        "overrides": overrides,
        "wall_s": wall_s,
        "epoch_s": timer.epoch_s,
        "epoch_to_val_end_s": timer.to_val_end_s,
        "train_time_s": results.get("train_time_s"),
        "train_images_per_s": results.get("train_images_per_s"),
        "best_val_acc": results.get("best_val_acc"),
        "best_epoch": results.get("best_epoch"),
        "final_val_acc": results.get("final_val_acc"),
        "params_trainable": results.get("params_trainable"),
        "params_total": results.get("params_total"),
        "results": results,
    }


def median_epoch(epoch_s: list[float]) -> tuple[float | None, bool]:
    """Median epoch time without the first (warm-up) epoch; with one epoch, that epoch and True."""
    if not epoch_s:
        return None, False
    if len(epoch_s) == 1:
        return epoch_s[0], True
    return statistics.median(epoch_s[1:]), False


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratios(reference: dict[str, Any], transferlab: dict[str, Any]) -> dict[str, float | None]:
    """transferlab / reference for each figure (and reference / transferlab for wall time)."""
    ref_median, _ = median_epoch(reference["epoch_s"])
    tl_median, _ = median_epoch(transferlab["epoch_s"])
    return {
        "wall_s": _ratio(transferlab["wall_s"], reference["wall_s"]),
        "reference_over_transferlab_wall_s": _ratio(reference["wall_s"], transferlab["wall_s"]),
        "median_epoch_s": _ratio(tl_median, ref_median),
        "train_images_per_s": _ratio(transferlab["train_images_per_s"], reference["train_images_per_s"]),
        "best_val_acc_difference": (transferlab["best_val_acc"] - reference["best_val_acc"]
                                    if transferlab["best_val_acc"] is not None and reference["best_val_acc"] is not None
                                    else None),
    }


def speed_phrase(factor: float | None) -> str:
    """'reference / transferlab = N× faster' (or slower), from reference wall time / transferlab wall time."""
    if factor is None:
        return "n/a"
    if factor >= 1:
        return f"reference / transferlab = {factor:.2f}× faster"
    return f"reference / transferlab = {factor:.2f}× (transferlab {1 / factor:.2f}× slower)"


def markdown_table(runs: list[dict[str, Any]], ratio_rows: dict[str, dict[str, float | None]] | None) -> str:
    """One row per run, and a ratio row per transferlab variant when the reference ran."""
    lines = [
        "| implementation | wall time (s) | median epoch (s), first excluded | train images/s | best val acc (epoch) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    single = False
    for run in runs:
        median, only_one = median_epoch(run["epoch_s"])
        single |= only_one
        acc = "n/a" if run["best_val_acc"] is None else f"{run['best_val_acc']:.4f} ({run['best_epoch']})"
        lines.append(f"| {run['implementation']} | {_fmt(run['wall_s'])} | {_fmt(median, 2)}{' †' if only_one else ''} "
                     f"| {_fmt(run['train_images_per_s'])} | {acc} |")
    for name, ratio in (ratio_rows or {}).items():
        diff = ratio["best_val_acc_difference"]
        lines.append(f"| {name} / reference | {_fmt(ratio['wall_s'], 2)} "
                     f"({speed_phrase(ratio['reference_over_transferlab_wall_s'])}) "
                     f"| {_fmt(ratio['median_epoch_s'], 2)} | {_fmt(ratio['train_images_per_s'], 2)} "
                     f"| {'n/a' if diff is None else f'{diff:+.4f}'} (difference) |")
    if single:
        lines.append("")
        lines.append("† only one epoch ran: the median is that first epoch, warm-up included.")
    return "\n".join(lines)


def machine_lines(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (f"Machine: {info['cpu']}, {info['cores_available']} cores available ({info['cpu_count']} in the machine), "
            f"torch threads {info['torch_threads']}, device {info['device']}{gpu}, "
            f"load average {_fmt(info['load_average_1min'], 2)} at the start\n"
            f"Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
            f"lightning {info['lightning']}, {info['platform']}")


def settings_line(args: argparse.Namespace, weights: str, extra: list[str]) -> str:
    extra_text = f", transferlab overrides: {' '.join(extra)}" if extra else ""
    return (f"Data {args.data}, backbone {args.backbone}, mode {args.mode}, weights {weights}, epochs {args.epochs}, "
            f"image size {args.image_size}, batch size {args.batch_size}, workers {args.workers}, seed {args.seed}"
            f"{extra_text}")


def model_alone(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of the model alone on synthetic batches already on the device, no data loading: the limit a run
    can reach. A training step (forward, backward, SGD step) except in ``feature_extract``, where the frozen
    backbone only runs forward; fp32 NCHW and bf16 autocast NHWC."""
    from transferlab.run.step_timing import StepShape, images_per_second

    model = torchvision.models.get_model(args.backbone, weights=None, num_classes=2)
    shape = StepShape(args.batch_size, args.image_size, train=args.mode != "feature_extract")
    device = torch.device(args.device)
    return {name: images_per_second(model, shape, device, precision, channels_last, max_seconds=5.0)
            for name, precision, channels_last in (("32-true NCHW", "32-true", False),
                                                  ("bf16-mixed NHWC", "bf16-mixed", True))}


def limit_lines(limits: dict[str, float], runs: list[dict[str, Any]], train: bool) -> str:
    """The model-alone figures, and each run's train images/s as a share of the faster of them."""
    step = "training steps" if train else "forward passes of the frozen backbone"
    fastest = max(limits.values())
    lines = [f"Model alone ({step} on synthetic batches on the device): "
             + ", ".join(f"{name} {speed:.1f} images/s" for name, speed in limits.items())]
    for run in runs:
        speed = run.get("train_images_per_s")
        if speed:
            share = (f"{speed / fastest:.0%} of the faster model-alone figure" if speed <= fastest else
                     "above the model-alone figures: its train phases ran the head on cached features")
            lines.append(f"  {run['implementation']}: {speed:.1f} train images/s, {share}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    data = Path(args.data)
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        print(f"--data {data} needs train/ and val/ folders (one sub-folder of images per class).", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)

    with tempfile.TemporaryDirectory(prefix="transferlab-bench-") as scratch:
        scratch_dir = Path(scratch)
        if args.weights:
            weights, weights_label = Path(args.weights), str(args.weights)
        else:
            weights = write_random_weights(args.backbone, args.seed,
                                           scratch_dir / f"{args.backbone}-seed{args.seed}.pth")
            weights_label = f"random init (seed {args.seed})"
        settings = settings_line(args, weights_label, extra)
        print(machine_lines(info), flush=True)
        print(settings, flush=True)

        runs: list[dict[str, Any]] = []
        if not args.skip_reference:
            reference = train_reference(
                args.data, backbone=args.backbone, mode=args.mode, weights_file=weights, epochs=args.epochs,
                batch_size=args.batch_size, num_workers=args.workers, image_size=args.image_size, seed=args.seed,
                device=args.device, resize_ratio=eval_resize_ratio(args.backbone),
            )
            runs.append(reference)
            gc.collect()

        variants = [(name, extra + overrides.split()) for name, overrides in args.variant or [("transferlab", "")]]
        for name, overrides in variants:
            base = Path(args.output_dir) if args.output_dir else scratch_dir
            runs.append(run_transferlab(args, weights, base / f"{name}-run", overrides, name))
            gc.collect()

    ratio = ({run["implementation"]: ratios(runs[0], run) for run in runs[1:]}
             if not args.skip_reference else None)
    table = markdown_table(runs, ratio)
    limits = model_alone(args) if args.model_alone else None
    print()
    print(machine_lines(info))
    print(settings)
    print()
    print(table, flush=True)
    if limits:
        print()
        print(limit_lines(limits, runs, train=args.mode != "feature_extract"), flush=True)

    if args.json:
        report = {
            "machine": info,
            "settings": {**{key: value for key, value in vars(args).items() if key != "json"},
                         "weights_used": weights_label, "transferlab_overrides": extra},
            "runs": {run["implementation"]: run for run in runs},
            "ratios": ratio,
            "model_alone_images_per_s": limits,
            "table": table,
        }
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"\nWritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
