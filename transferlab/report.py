"""Sweep reports: one table and one plot comparing training runs.

``summary.csv``, ``summary.md`` and ``curves.png`` are written into a sweep folder when a Hydra
multirun ends (:class:`SweepReport`, registered in ``conf/hydra/default.yaml``), and rebuilt for any
run or sweep folders, mixed and from any day, by ``python -m transferlab.report PATH... [--out DIR]``.
"""

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from transferlab.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

RESULTS, FAILURE = "results.json", "failure.json"
CSV_NAME, MARKDOWN_NAME, PLOT_NAME = "summary.csv", "summary.md", "curves.png"

# Overrides that never make a good label or column: paths and deletions.
NOISE_KEYS = ("data.root", "paths.", "hydra.", "hydra/", "trainer.default_root_dir")

# results.json keys copied into the table, in order.
METRICS = ("best_val_acc", "best_epoch", "best_val_loss", "final_val_acc", "epochs_run", "train_time_s",
           "train_images_per_s", "params_trainable", "params_total")


@dataclass
class Run:
    """One run folder as the report sees it."""

    path: Path
    overrides: list[str]
    results: dict[str, Any] | None = None
    error: str | None = None
    settings: dict[str, str] = field(default_factory=dict)  # the overrides that differ between reported runs
    label: str = ""

    @property
    def override_values(self) -> dict[str, str]:
        """The overrides as ``{key: value}``."""
        return parse_overrides(self.overrides)

    @property
    def status(self) -> str:
        """``ok`` with results, ``failed`` with ``failure.json``, ``incomplete`` with neither (killed, or running)."""
        if self.results is not None:
            return "ok"
        return "failed" if self.error is not None else "incomplete"

    def metric(self, key: str) -> Any:
        """A figure from ``results.json``; None for a run without results."""
        return (self.results or {}).get(key)


# Finding run folders ------------------------------------------------------------------------------


def is_run_folder(path: Path) -> bool:
    """A run folder: Hydra's ``.hydra/``, ``results.json`` or ``failure.json`` (a killed run has only ``.hydra/``)."""
    return (path / ".hydra").is_dir() or (path / RESULTS).is_file() or (path / FAILURE).is_file()


def _natural_key(name: str) -> list[Any]:
    """Sort key that puts job ``10`` after job ``9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_run_folders(path: Path) -> list[Path]:
    """Run folders at or under ``path`` (a run, a sweep, or any folder holding them), in natural order."""
    if is_run_folder(path):
        return [path]
    found: list[Path] = []
    for root, dirs, _ in os.walk(path):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=_natural_key)
        here = Path(root)
        runs = [d for d in dirs if is_run_folder(here / d)]
        found.extend(here / d for d in runs)
        dirs[:] = [d for d in dirs if d not in runs]  # a run folder holds no further runs
    return found


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run folders under every path, each once (by resolved path), in the order given."""
    seen: dict[Path, None] = {}
    for path in paths:
        for run in find_run_folders(Path(path)):
            seen.setdefault(run.resolve(), None)
    return list(seen)


# Reading runs -------------------------------------------------------------------------------------


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["mode=scratch", "+x=1", "~y"]`` -> ``{"mode": "scratch", "x": "1", "~y": ""}``."""
    parsed: dict[str, str] = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        parsed[key.lstrip("+")] = value
    return parsed


def _load_yaml(path: Path) -> Any:
    """A YAML file's content, or None when it is missing or unreadable."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _load_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is missing; an unreadable file raises."""
    if not path.is_file():
        return None
    content = json.loads(path.read_text())
    if not isinstance(content, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return content


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def read_run(path: Path) -> Run:
    """A run folder's overrides and ``results.json``, or the error from its ``failure.json``."""
    overrides = _load_yaml(path / ".hydra" / "overrides.yaml") or []
    run = Run(path=path, overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [])
    try:
        run.results = _load_json(path / RESULTS)
        failure = _load_json(path / FAILURE) if run.results is None else None
    except (OSError, ValueError) as error:
        run.error = f"unreadable results: {error}"
        return run
    if failure is not None:
        run.error = first_line(failure.get("error") or "") or "unknown error (failure.json has no message)"
    elif run.results is None:
        run.error = f"no {RESULTS} or {FAILURE}: killed, or still running"
    return run


_MISSING = object()


def _select(node: Any, keys: Iterable[str]) -> Any:
    """``node[k1][k2]...``, or ``_MISSING`` where a key is not there."""
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def configured_value(path: Path, key: str) -> str:
    """What ``key`` was in a run that did not override it: its group choice or its config value; "" if unknown."""
    choices = _select(_load_yaml(path / ".hydra" / "hydra.yaml"), ("hydra", "runtime", "choices"))
    if isinstance(choices, dict) and key in choices:
        return _as_override(choices[key])
    value = _select(_load_yaml(path / ".hydra" / "config.yaml"), key.split("."))
    return "" if value is _MISSING or isinstance(value, dict) else _as_override(value)


def _as_override(value: Any) -> str:
    """A config value written as on the command line (``null``, ``true``, ``0.001``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_as_override(item) for item in value) + "]"
    return str(value)


def normalise(value: str) -> str:
    """An override's value as :func:`configured_value` writes it (``False`` -> ``false``), so both compare."""
    try:
        return _as_override(yaml.safe_load(value))
    except yaml.YAMLError:
        return value


def is_noise(key: str) -> bool:
    """Overrides left out of labels and columns: data and output paths, Hydra's own keys, deletions."""
    return key.startswith("~") or any(key == noise or key.startswith(noise) for noise in NOISE_KEYS)


def varying_settings(runs: Sequence[Run]) -> list[str]:
    """Override keys whose effective value differs between the runs (filled in where a run kept the default).

    Sets ``run.settings`` for every run; returns the keys in first-seen order.
    """
    overrides = [run.override_values for run in runs]
    keys = list(dict.fromkeys(key for values in overrides for key in values if not is_noise(key)))
    values = {key: [normalise(given[key]) if key in given else configured_value(run.path, key)
                    for run, given in zip(runs, overrides)] for key in keys}
    varying = [key for key in keys if len(set(values[key])) > 1]
    for index, run in enumerate(runs):
        run.settings = {key: values[key][index] for key in varying}
    return varying


def assign_labels(runs: Sequence[Run]) -> None:
    """Label each run by its varying settings, else by its folder; a clash adds the parent folder's name."""
    for run in runs:
        run.label = " ".join(f"{key}={value}" for key, value in run.settings.items()) or run.path.name
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.parent.name}/{run.path.name})"


def sort_runs(runs: Iterable[Run]) -> list[Run]:
    """Best ``val/acc`` first (ties: lower best val loss); runs without results last."""
    def key(run: Run) -> tuple[int, float, float]:
        acc, loss = run.metric("best_val_acc"), run.metric("best_val_loss")
        return (run.status != "ok" or acc is None, -(acc or 0.0), loss if loss is not None else float("inf"))

    return sorted(runs, key=key)


def read_runs(folders: Iterable[Path]) -> tuple[list[Run], list[str]]:
    """Runs read, labelled and sorted, and the setting keys that differ between them."""
    runs = [read_run(folder) for folder in folders]
    keys = varying_settings(runs)
    assign_labels(runs)
    return sort_runs(runs), keys


# Writing the report -------------------------------------------------------------------------------


def table_rows(runs: Sequence[Run], keys: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """The CSV header and rows: label, settings, status, figures, error, all overrides, run folder."""
    header = ["label", *keys, "status", *METRICS, "error", "overrides", "run_dir"]
    rows = [[run.label, *(run.settings[key] for key in keys), run.status, *(run.metric(m) for m in METRICS),
             run.error or "", " ".join(run.overrides), str(run.path)] for run in runs]
    return header, rows


def to_csv(runs: Sequence[Run], keys: Sequence[str]) -> str:
    """``summary.csv``: full-precision figures, empty cells where a run has none."""
    header, rows = table_rows(runs, keys)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return buffer.getvalue()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def _folder(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None:
        try:
            return path.relative_to(relative_to.resolve()).as_posix() or "."
        except ValueError:
            pass
    return str(path)


def to_markdown_table(runs: Sequence[Run], keys: Sequence[str], relative_to: Path | None = None) -> str:
    """The runs as a Markdown table, best first; folders relative to ``relative_to`` when under it."""
    first = list(keys) or ["run"]
    header = ["#", *first, "status", "best val/acc", "best epoch", "best val loss", "train time (s)", "images/s",
              "trainable params", "total params", "folder"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for rank, run in enumerate(runs, 1):
        status = run.status if run.error is None else f"{run.status}: {_shorten(run.error)}"
        cells = [str(rank), *([run.settings[key] for key in keys] or [run.label]), status,
                 _number(run.metric("best_val_acc"), 4), _number(run.metric("best_epoch"), 0),
                 _number(run.metric("best_val_loss"), 4), _number(run.metric("train_time_s"), 1),
                 _number(run.metric("train_images_per_s"), 1), _number(run.metric("params_trainable"), 0),
                 _number(run.metric("params_total"), 0), _folder(run.path, relative_to)]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_markdown(runs: Sequence[Run], keys: Sequence[str], out_dir: Path) -> str:
    """``summary.md``: a heading, the table and the curves."""
    failed = sum(run.status != "ok" for run in runs)
    note = f", {failed} without results" if failed else ""
    return (f"# Runs compared\n\n{len(runs)} runs{note}, best `val/acc` first. Epochs count from 0.\n\n"
            f"{to_markdown_table(runs, keys, relative_to=out_dir)}\n"
            f"![val/acc, val/loss and train/loss per epoch]({PLOT_NAME})\n")


def plot_curves(runs: Sequence[Run]) -> "Figure":
    """val/acc, val/loss and train/loss against epoch, one line per run with a history, one legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(15, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    panels = (("val_acc", "val/acc"), ("val_loss", "val/loss"), ("train_loss", "train/loss"))
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for index, run in enumerate(run for run in runs if run.status == "ok" and run.metric("history")):
        colour = f"C{index % 10}"
        for ax, (key, _) in zip(axes, panels):
            points = [(h["epoch"], h[key]) for h in run.metric("history") if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=colour, label=run.label)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize="small")
    else:
        axes[0].text(0.5, 0.5, "no run with results", ha="center", va="center", transform=axes[0].transAxes)
    return figure


def write_report(runs: Sequence[Run], keys: Sequence[str], out_dir: Path) -> None:
    """Write ``summary.csv``, ``summary.md`` and ``curves.png`` for the runs (from :func:`read_runs`) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_text, markdown = to_csv(runs, keys), to_markdown(runs, keys, out_dir)
    for name, text in ((CSV_NAME, csv_text), (MARKDOWN_NAME, markdown)):
        with atomic_path(out_dir / name) as temporary:
            temporary.write_text(text)
    figure = plot_curves(runs)
    with atomic_path(out_dir / PLOT_NAME) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    log.info("Report on %d runs written to %s (%s, %s, %s)", len(runs), out_dir, CSV_NAME, MARKDOWN_NAME, PLOT_NAME)


# Hydra callback and command line ------------------------------------------------------------------


class SweepReport(Callback):
    """Hydra callback: writes the report into ``hydra.sweep.dir`` when a multirun ends."""

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
                log.info("Best run: %s, val/acc %s (%s)", best.label, _number(best.metric("best_val_acc"), 4),
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
    """Entry point; 0 on success, 2 when a path holds no run folder."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for path in args.paths:
        if not find_run_folders(path):
            reason = ("does not exist" if not path.exists()
                      else "holds no run folder (one with .hydra/, results.json or failure.json)")
            print(f"transferlab.report: {path} {reason}", file=sys.stderr)
            return 2
    out_dir = args.out or (args.paths[0] if len(args.paths) == 1 else Path.cwd())
    runs, keys = read_runs(find_runs(args.paths))
    write_report(runs, keys, out_dir)
    print(to_markdown_table(runs, keys, relative_to=out_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
