"""Writing a sweep report: ``summary.csv``, ``summary.md`` and ``curves.png`` for runs read by :mod:`.report_runs`."""

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.files import atomic_path
from transferlab.run.report_runs import Run, readable, search_bests

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

CSV_NAME, MARKDOWN_NAME, PLOT_NAME = "summary.csv", "summary.md", "curves.png"

# The legend below the curves: as many columns (up to 3) as its longest label allows across the 15-inch figure,
# which grows a row's height per legend row, so that the 20 labels of a search still leave the plots their room.
LEGEND_CHARS = 210  # characters of "small" (8.3 pt) legend text across 15 inches, each entry's marker and gap counted
LEGEND_ROW_INCHES = 0.22  # a legend row of "small" text with its spacing

# results.json keys copied into the table, in order.
METRICS = ("best_val_acc", "best_epoch", "best_val_loss", "final_val_acc", "epochs_run", "train_time_s",
           "train_images_per_s", "params_trainable", "params_total")


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


def format_number(value: Any, digits: int) -> str:
    """A figure for the Markdown table: thousands separated, ``digits`` decimals for floats, ``–`` for none."""
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


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_markdown_table(runs: Sequence[Run], keys: Sequence[str], relative_to: Path | None = None) -> str:
    """The runs as a Markdown table, best first; folders relative to ``relative_to`` when under it."""
    first = list(keys) or ["run"]
    header = ["#", *first, "status", "best val/acc", "best epoch", "best val loss", "train time (s)", "images/s",
              "trainable params", "total params", "folder"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for rank, run in enumerate(runs, 1):
        status = run.status if run.error is None else f"{run.status}: {_shorten(run.error)}"
        cells = [str(rank), *([readable(run.settings[key]) for key in keys] or [run.label]), status,
                 format_number(run.metric("best_val_acc"), 4), format_number(run.metric("best_epoch"), 0),
                 format_number(run.metric("best_val_loss"), 4), format_number(run.metric("train_time_s"), 1),
                 format_number(run.metric("train_images_per_s"), 1), format_number(run.metric("params_trainable"), 0),
                 format_number(run.metric("params_total"), 0), _folder(run.path, relative_to)]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def search_summary(runs: Sequence[Run], out_dir: Path) -> str:
    """Markdown naming the best trial of each Optuna search among the runs: its folder, val/acc and parameters
    (exactly, to run it again); "" when no run comes from one."""
    lines = []
    for best in search_bests(runs):
        params = " ".join(f"{key}={value}" for key, value in best.params.items())
        source = _folder(best.results_file, out_dir)
        if best.run is None:
            lines.append(f"- `{source}`: objective {best.value}, no run folder here used `{params}`")
        else:
            lines.append(f"- `{_folder(best.run.path, out_dir)}`, best val/acc "
                         f"{format_number(best.run.metric('best_val_acc'), 4)}: `{params}` (from `{source}`)")
    return "## Best trial of the search\n\n" + "\n".join(lines) + "\n\n" if lines else ""


def to_markdown(runs: Sequence[Run], keys: Sequence[str], out_dir: Path) -> str:
    """``summary.md``: a heading, the best trial of an Optuna search, the table and the curves."""
    failed = sum(run.status != "ok" for run in runs)
    note = f", {failed} without results" if failed else ""
    return (f"# Runs compared\n\n{len(runs)} runs{note}, best `val/acc` first. Epochs count from 0.\n\n"
            f"{search_summary(runs, out_dir)}{to_markdown_table(runs, keys, relative_to=out_dir)}\n"
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
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for index, run in enumerate(run for run in runs if run.status == "ok" and run.metric("history")):
        colour, style = f"C{index % 10}", ("-", "--", ":", "-.")[index // 10 % 4]  # 10 colours, then dashed
        for ax, (key, _) in zip(axes, panels, strict=True):
            points = [(h["epoch"], h[key]) for h in run.metric("history") if h.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, color=colour, linestyle=style,
                        label=run.label)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        columns = max(1, min(3, len(labels), LEGEND_CHARS // (max(map(len, labels)) + 6)))
        figure.set_size_inches(15, 5 + LEGEND_ROW_INCHES * math.ceil(len(labels) / columns))
        figure.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize="small")
    else:
        axes[0].text(0.5, 0.5, "no run with results", ha="center", va="center", transform=axes[0].transAxes)
    return figure


def write_report(runs: Sequence[Run], keys: Sequence[str], out_dir: Path) -> None:
    """Write ``summary.csv``, ``summary.md`` and ``curves.png`` for the runs (from ``read_runs``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_text, markdown = to_csv(runs, keys), to_markdown(runs, keys, out_dir)
    for name, text in ((CSV_NAME, csv_text), (MARKDOWN_NAME, markdown)):
        with atomic_path(out_dir / name) as temporary:
            temporary.write_text(text)
    figure = plot_curves(runs)
    with atomic_path(out_dir / PLOT_NAME) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    log.info("Report on %d runs written to %s (%s, %s, %s)", len(runs), out_dir, CSV_NAME, MARKDOWN_NAME, PLOT_NAME)
