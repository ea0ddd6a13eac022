"""Export: ``python -m transferlab.export ckpt=PATH format=onnx|torchscript [output=FILE]``.

Writes the model (images in, logits out, any batch size) and, next to it, ``<model file>.json``
with what a deployment needs to preprocess and read the output: class names, input size, resize,
mean and std. The exported model is run once against the checkpoint to report the largest logit
difference.
"""

import importlib.util
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, DictConfig
from torch import nn

from transferlab.cli.args import run_cli
from transferlab.errors import ConfigError
from transferlab.files import write_json_atomically
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.module import TransferClassifier

log = logging.getLogger(__name__)

USAGE = "python -m transferlab.export ckpt=PATH format=onnx|torchscript [output=FILE] [opset=null] [verify=true]"
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
ONNX_PACKAGES = ("onnx", "onnxscript")  # torch.onnx.export(dynamo=True) needs both
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # trace with one batch size, verify with another: the batch axis is dynamic
TOLERANCE = 1e-4  # float32 logits of a re-ordered graph (ONNX, TorchScript) agree to ~1e-5; more is a real difference
ONNX_SINGLE_FILE_LIMIT = 1_500_000_000  # bytes of weights; protobuf files stop at 2 GB, larger ones go external


@dataclass
class ExportArgs:
    ckpt: str = MISSING
    format: str = MISSING  # onnx or torchscript
    output: str | None = None  # the model file; null: next to the checkpoint (best.onnx, best.torchscript.pt)
    opset: int | None = None  # ONNX opset; null: the exporter's default
    verify: bool = True  # run the exported model once and compare its logits with the checkpoint's


class LogitsModel(nn.Module):
    """Backbone and head of a TransferClassifier as a plain module: images in, logits out."""

    def __init__(self, classifier: TransferClassifier) -> None:
        super().__init__()
        self.backbone = classifier.backbone
        self.head = classifier.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        if isinstance(features, tuple):
            features = features[0]
        return self.head(features)


def export_model(model: TransferClassifier, format: str, path: str | Path, opset: int | None = None,
                 verify: bool = True, checkpoint: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``model`` as ``format`` to ``path`` and its metadata to ``<path>.json``; returns both paths."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of {', '.join(FORMATS)}.")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    network = LogitsModel(model.cpu()).eval()
    inputs = preprocessing(model)
    shape = inputs.input_shape
    example = torch.randn(EXAMPLE_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    if format == "onnx":
        _export_onnx(network, example, path, opset)
    else:
        _export_torchscript(network, example, path)
    metadata: dict[str, Any] = {
        "format": format,
        "model_file": path.name,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "backbone": model.hparams.backbone,
        "class_names": list(model.hparams.class_names),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "logits, one per class in class_names order (softmax gives probabilities)",
        "input_size": shape,
        "dynamic_batch": True,
        "resize_size": [inputs.resize_size],
        "interpolation": inputs.interpolation,
        "mean": list(inputs.mean),
        "std": list(inputs.std),
        "preprocessing": "RGB image; resize the shorter side to resize_size, centre-crop to input_size, scale to "
                         "[0, 1], subtract mean and divide by std per channel; NCHW float32",
        "torch_version": torch.__version__,
    }
    if verify:
        metadata["max_abs_diff"] = check_logits(network, format, path, shape)
    sidecar = path.with_name(path.name + ".json")
    write_json_atomically(sidecar, metadata)
    return path, sidecar


def _export_onnx(network: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"format=onnx needs the package(s) {', '.join(missing)}, which are not installed. Run "
            "pip install 'transferlab[export]' (onnx, onnxscript, onnxruntime), or use format=torchscript."
        )
    weight_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        network, (example,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: batch}}, opset_version=opset,
        external_data=weight_bytes > ONNX_SINGLE_FILE_LIMIT, verbose=False,
    )


def _export_torchscript(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # TorchScript is deprecated upstream in favour of torch.export; still loadable
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        traced = torch.jit.trace(network, example)
        traced.save(str(path))


def load_exported(format: str, path: str | Path) -> Any:
    """A callable ``images (numpy or tensor) -> logits tensor`` for an exported file."""
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(images: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return module(torch.as_tensor(images))

        return run_torchscript
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("Running an ONNX export needs onnxruntime: pip install 'transferlab[export]'.")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(images: torch.Tensor) -> torch.Tensor:
        array = images.numpy() if isinstance(images, torch.Tensor) else images
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    return run_onnx


def check_logits(network: nn.Module, format: str, path: Path, shape: list[int]) -> float | None:
    """Largest |logit difference| between the exported file and ``network`` on a random batch; None if it cannot run."""
    try:
        run = load_exported(format, path)
    except ConfigError as error:
        log.warning("Export not verified: %s", error)
        return None
    images = torch.randn(CHECK_BATCH, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = network(images)
    difference = float((run(images) - expected).abs().max())
    if difference > TOLERANCE:
        log.warning("The exported model's logits differ from the checkpoint's by up to %.3g (> %g).",
                    difference, TOLERANCE)
    return difference


def default_output(checkpoint: Path, format: str) -> Path:
    """Next to the checkpoint: ``best.onnx``, ``best.torchscript.pt``."""
    return checkpoint.with_name(checkpoint.stem + FORMATS[format])


def export(cfg: DictConfig) -> tuple[Path, Path]:
    """Run the command-line configuration; returns the model file and its JSON."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not one of {', '.join(FORMATS)}.")
    checkpoint = Path(cfg.ckpt).expanduser()
    model = load_classifier(checkpoint)
    output = Path(cfg.output).expanduser() if cfg.output else default_output(checkpoint, cfg.format)
    path, sidecar = export_model(model, cfg.format, output, cfg.opset, cfg.verify, checkpoint)
    metadata = json.loads(sidecar.read_text())
    difference = metadata.get("max_abs_diff")
    check = f"; logits within {difference:.2g} of the checkpoint's" if difference is not None else ""
    print(f"Exported {checkpoint} as {cfg.format}: {path} (input {metadata['input_size']}, "
          f"{len(metadata['class_names'])} classes{check}); metadata: {sidecar}")
    return path, sidecar


def main(argv: list[str] | None = None) -> None:
    run_cli("transferlab.export", ExportArgs, export, USAGE, argv)


if __name__ == "__main__":
    main()
