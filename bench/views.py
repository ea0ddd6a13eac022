"""How many cached augmented views a frozen backbone needs: accuracy and time against fresh augmentation.

    python bench/views.py --data ../shared/datasets/hymenoptera_data \
        --weights /tmp/exemplar-source/resnet18-exemplar.pth --epochs 25 --seeds 0 1 2 3 --settings fresh 2 3 5 8 none

Every run is transferlab's ``mode=feature_extract`` from the same ``--weights`` (a pretrained backbone: a
random one says nothing about accuracy; ``bench/pretrain_source.py`` makes one), with one data setting:
``fresh`` (``data.cache_views=null``: a new random crop and flip of every image every epoch, the backbone runs
every epoch), ``K`` (``data.cache_views=K``: K augmented views per image computed once, each epoch draws one)
or ``none`` (``data.augment=[]``: no augmentation, one exact view), or any overrides (``data.cache_images=false``,
``trainer.precision=bf16-mixed``, ``channels_last=true``): a speed switch that must not cost accuracy. Each run
lasts ``--epochs``; the best val accuracy up to each of ``--report-epochs`` is read from its per-epoch history,
and its wall time up to that epoch is the run's wall time less the later epochs' times.

With real ImageNet weights (``--backbone tf_efficientnet_lite0``, the file of
``transferlab.model.efficientnet_pytorch.write_lite0_weights``):

    python bench/views.py --data ../shared/datasets/hymenoptera_data --backbone tf_efficientnet_lite0 \
        --weights /tmp/lite0/tf_efficientnet_lite0.pth --epochs 25 --report-epochs 10 25 --seeds 0 1 2 \
        --settings fresh 1 2 8 none data.cache_images=false trainer.precision=bf16-mixed channels_last=true
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/views.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from bench.compare import machine_info, machine_lines, run_transferlab


def setting_overrides(setting: str) -> list[str]:
    """The transferlab overrides of one setting: fresh, none, a number of views, or any ``key=value`` overrides
    (space-separated, e.g. ``trainer.precision=bf16-mixed``) on top of the defaults."""
    if setting == "fresh":
        return ["data.cache_views=null"]
    if setting == "none":
        return ["data.augment=[]"]
    if "=" in setting:
        return setting.split()
    return [f"data.cache_views={int(setting)}"]


def up_to(run: dict, epochs: int) -> tuple[float, float]:
    """(best val accuracy, wall seconds) of ``run`` counting its first ``epochs`` epochs only."""
    history = [record for record in run["results"]["history"] if record["epoch"] < epochs]
    later = sum(run["epoch_s"][epochs:])
    return max(record["val_acc"] for record in history), run["wall_s"] - later


def summary_table(rows: list[dict], settings: list[str], report_epochs: list[int]) -> str:
    header = " | ".join(f"best val acc, {e} epochs | wall (s), {e} epochs" for e in report_epochs)
    lines = [f"| setting | {header} |", "| --- |" + " ---: | ---: |" * len(report_epochs)]
    for setting in settings:
        runs = [row for row in rows if row["setting"] == setting]
        cells = []
        for epochs in report_epochs:
            accs = [row["acc"][str(epochs)] for row in runs]
            walls = [row["wall"][str(epochs)] for row in runs]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.4f} ± {spread:.4f} ({min(accs):.3f}–{max(accs):.3f}) "
                         f"| {statistics.mean(walls):.1f}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--weights", type=Path, required=True,
                        help="a pretrained state dict of --backbone (a torchvision or timm name)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--report-epochs", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=["fresh", "2", "3", "5", "8", "none"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.mode = "feature_extract"
    print(machine_lines(machine_info(args.device)), flush=True)
    rows = []
    for seed in args.seeds:
        args.seed = seed
        for setting in args.settings:
            with tempfile.TemporaryDirectory() as run_dir:
                run = run_transferlab(args, args.weights, Path(run_dir), ["trainer.enable_progress_bar=false",
                                                                          *setting_overrides(setting)], setting)
            reached = {str(e): up_to(run, e) for e in args.report_epochs}
            rows.append({"setting": setting, "seed": seed, "acc": {e: acc for e, (acc, _) in reached.items()},
                         "wall": {e: wall for e, (_, wall) in reached.items()}})
            print(json.dumps(rows[-1]), flush=True)
    table = summary_table(rows, args.settings, args.report_epochs)
    print(f"\n{args.backbone} feature_extract from {args.weights}, seeds {args.seeds}, mean ± standard deviation "
          f"(min–max)\n\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
