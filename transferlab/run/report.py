"""Sweep reports' entry points: a Hydra callback when a multirun ends, and ``python -m transferlab.report``."""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from transferlab.layout import FAILURE, RESULTS
from transferlab.run.report_output import format_number, to_markdown_table, write_report
from transferlab.run.report_runs import find_run_folders, find_runs, read_runs

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): writes the report into ``hydra.sweep.dir`` when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # imports Lightning: here, not at the top, so that the report CLI starts quickly
        from transferlab.ranks import is_global_zero

        if not is_global_zero():  # a DDP process that srun started: rank zero writes the report
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            folders = find_runs([sweep_dir])
            if not folders:
                log.warning("No run folders in %s: no sweep report written.", sweep_dir)
                return
            runs, keys = read_runs(folders)
            write_report(runs, keys, sweep_dir)
            best = runs[0]
            if best.status == "ok":
                log.info("Best run: %s, val/acc %s (%s)", best.label, format_number(best.metric("best_val_acc"), 4),
                         best.path)
        except Exception:  # the sweep itself succeeded: say why its report is missing, do not fail it
            log.exception("Sweep report for %s failed; rebuild it with: python -m transferlab.report %s",
                          sweep_dir, sweep_dir)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments of ``python -m transferlab.report``."""
    parser = argparse.ArgumentParser(
        prog="python -m transferlab.report",
        description="Compare training runs: write summary.csv, summary.md and curves.png, print the table.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, sweep folders, or folders holding them")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the report goes (default: the folder given when one is given, else the "
                             "current directory)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: report on run folders of any sweeps and days; 0 on success, 2 when a path holds no run folder."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for path in args.paths:
        if not find_run_folders(path):
            reason = ("does not exist" if not path.exists()
                      else f"holds no run folder (one with .hydra/, {RESULTS} or {FAILURE})")
            print(f"transferlab.run.report: {path} {reason}", file=sys.stderr)
            return 2
    out_dir = args.out or (args.paths[0] if len(args.paths) == 1 else Path.cwd())
    runs, keys = read_runs(find_runs(args.paths))
    write_report(runs, keys, out_dir)
    print(to_markdown_table(runs, keys, relative_to=out_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
