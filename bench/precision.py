"""Time training and inference steps over precisions, memory formats, image sizes and batch sizes.

    python bench/precision.py --backbone resnet18 --sizes 64 128 224 --batches 8 32 64

Each cell is images per second of one step on random images (``transferlab.run.step_timing``, the same timing
the run's setup probe uses): training is forward, cross-entropy, backward and an SGD step of the whole network,
inference a forward in eval mode without gradients. Prints one Markdown table per step kind, with each variant's
speed relative to fp32 NCHW.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/precision.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

import torch
import torchvision

from bench.compare import machine_info, machine_lines
from transferlab.run.step_timing import StepShape, images_per_second

VARIANTS = [("fp32", "32-true", False), ("fp32 channels_last", "32-true", True),
            ("bf16", "bf16-mixed", False), ("bf16 channels_last", "bf16-mixed", True)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", help="a torchvision.models name (random weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per cell after warm-up (at least 2 steps)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    return parser.parse_args(argv)


def table(rows: list[dict], train: bool) -> str:
    names = [name for name, _, _ in VARIANTS]
    lines = ["| image size | batch | " + " | ".join(f"{name} (img/s)" for name in names) + " | fastest |",
             "| ---: | ---: | " + " | ".join("---:" for _ in names) + " | --- |"]
    for row in (row for row in rows if row["train"] == train):
        speeds = [row[name] for name in names]
        cells = [f"{speed:.1f} ({speed / speeds[0]:.2f}×)" for speed in speeds]
        fastest = names[speeds.index(max(speeds))]
        lines.append(f"| {row['image_size']} | {row['batch_size']} | " + " | ".join(cells) + f" | {fastest} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    info = machine_info(args.device)
    print(machine_lines(info), flush=True)
    model = torchvision.models.get_model(args.backbone, weights=None, num_classes=2)
    rows = []
    for train, size, batch in itertools.product([True, False], args.sizes, args.batches):
        shape = StepShape(batch, size, train)
        row = {"train": train, "image_size": size, "batch_size": batch}
        for name, precision, channels_last in VARIANTS:
            row[name] = images_per_second(model, shape, device, precision, channels_last, max_seconds=args.seconds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for train in (True, False):
        print(f"\n{args.backbone}, {'training' if train else 'inference'} steps, {args.device}\n")
        print(table(rows, train))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "backbone": args.backbone, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
