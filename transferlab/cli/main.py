"""The ``transferlab`` console command: ``transferlab <command> [arguments ...]``.

Each command is a module's ``main``; its arguments pass through unchanged, so ``transferlab train
mode=finetune`` is ``python -m transferlab.train mode=finetune`` (Hydra's overrides, ``-m`` and ``--help``
included) and ``transferlab predict ckpt=...`` is ``python -m transferlab.predict ckpt=...``.
"""

import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from transferlab import __version__


class Command(NamedTuple):
    module: str  # the module whose main() runs the command
    summary: str


COMMANDS = {
    "train": Command("transferlab.cli.train", "train a classifier (Hydra overrides; -m sweeps)"),
    "find-lr": Command("transferlab.cli.find_lr", "find a learning rate for a training configuration"),
    "predict": Command("transferlab.cli.predict", "label image files with a checkpoint, into a CSV"),
    "evaluate": Command("transferlab.cli.evaluate", "accuracy, per-class report and confusion matrix on a folder"),
    "export": Command("transferlab.cli.export", "a checkpoint as TorchScript or ONNX, with its preprocessing"),
    "serve": Command("transferlab.cli.serve", "an HTTP prediction server (POST /predict, GET /health)"),
    "report": Command("transferlab.run.report", "summary table and curves of sweeps and runs"),
    "advise": Command("transferlab.cli.advise", "which backbone and mode suit a data set, before training"),
}
EXAMPLES = """\
examples:
  transferlab train data=image_folder data.root=~/photos backbone=resnet50 mode=finetune
  transferlab train -m mode=scratch,finetune,feature_extract
  transferlab find-lr data=image_folder data.root=~/photos
  transferlab predict ckpt=outputs/DATE/TIME/checkpoints/best.ckpt input=~/new_photos
  transferlab serve ckpt=outputs/DATE/TIME/checkpoints/best.ckpt port=8000
  transferlab train --help          (each command's own help)"""


def usage() -> str:
    """The command list ``transferlab --help`` prints."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(["usage: transferlab <command> [arguments ...]", "", "commands:", *lines, "", EXAMPLES])


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``transferlab <command> ...``: the command's ``main`` sees its own arguments in ``sys.argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"transferlab {__version__}")
        return
    name, arguments = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        print(f"transferlab: error: '{name}' is not a command. {hint}Commands: {', '.join(COMMANDS)} "
              "(transferlab --help lists them).", file=sys.stderr)
        sys.exit(2)
    command = importlib.import_module(COMMANDS[name].module)
    sys.argv = [f"transferlab {name}", *arguments]  # Hydra and the key=value commands read sys.argv
    status = command.main()
    sys.exit(status if isinstance(status, int) else 0)  # report's main returns its exit status


if __name__ == "__main__":
    main()
