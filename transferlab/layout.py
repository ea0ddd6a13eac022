"""The files a run leaves in its folder, each named once here."""

import os
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best"  # ModelCheckpoint file names, without the .ckpt suffix Lightning adds
LAST_CHECKPOINT = "last"
CHECKPOINT_SUFFIX = ".ckpt"
RESULTS = "results.json"
FAILURE = "failure.json"
SPLIT = "split.json"
SCAN_CACHE = "scan.json"
SKIPPED = "skipped.txt"
SPEED_PROBE = "speed_probe.json"  # the setup probe's timings of each precision and memory format, and its choice
TRAINABILITY = "trainability.md"  # which backbone stages train, when, in which optimizer group at which rate
ADVICE_JSON = "advice.json"  # python -m transferlab.advise: its measurements and recommendations
ADVICE_MD = "advice.md"  # the same as the printed Markdown report
LR_FIND_JSON = "lr_find.json"  # the learning-rate finder: its suggestion, range and curve (lrs, losses)
LR_FIND_PNG = "lr_find.png"  # the same curve, loss against learning rate, the suggestion marked
PREDICTIONS = "predictions.csv"  # python -m transferlab.predict's CSV when output= is not given
LOCK = ".lock"  # held by the live run (transferlab.run.folder); left behind, it marks a folder a run started in


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's ``best.ckpt`` and ``last.ckpt`` are."""
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint written every epoch (and on SIGTERM/Ctrl-C), which ``resume=true`` continues from."""
    return checkpoint_dir(run_dir) / (LAST_CHECKPOINT + CHECKPOINT_SUFFIX)


def run_folder(checkpoint: str | Path) -> Path:
    """The training run a checkpoint belongs to: the parent of ``checkpoints/``, else the checkpoint's folder."""
    folder = Path(os.path.abspath(Path(checkpoint).expanduser())).parent  # a link's own folder, not its target's
    return folder.parent if folder.name == CHECKPOINT_DIR else folder
