"""Reading run folders for a sweep report: their overrides and results, the settings that differ, their labels."""

import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from transferlab.layout import FAILURE, RESULTS

log = logging.getLogger(__name__)


# Overrides that never make a good label or column: data and output paths, Hydra's own settings.
NOISE_KEYS = ("data.root", "paths.", "hydra.", "hydra/", "trainer.default_root_dir")
SEARCH_RESULTS = "optimization_results.yaml"  # the Optuna sweeper's, in its sweep folder
LABEL_DIGITS = 3  # significant digits of a float in labels: 0.0056115164153345 -> 0.00561


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
        """The overrides as ``{key: value}`` (see :func:`parse_overrides`)."""
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


@functools.cache
def parse_override(text: str) -> Override | None:
    """Hydra's own reading of one override, or None (logged once per text) where Hydra cannot parse it."""
    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except HydraException as error:
        log.warning("Hydra cannot parse the override %r; the report keeps it as written. %s", text,
                    first_line(str(error)))
        return None


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Overrides as ``{key: value}``, read by Hydra's own parser; deletions (``~key``) left out.

    A value is written as :func:`configured_value` writes config values, from the type Hydra gave it in the
    run's config, so that it compares with runs that kept the default: ``["++optimizer.lr=1e-3", "x='a b'",
    "~y"]`` -> ``{"optimizer.lr": "0.001", "x": "a b"}``. A sweep keeps its text; an override Hydra cannot
    parse is split at its first ``=``.
    """
    parsed: dict[str, str] = {}
    for text in map(str, overrides):
        override = parse_override(text)
        if override is None:
            key, _, value = text.partition("=")
            parsed[key] = value
        elif not override.is_delete():
            # A sweep has no one value: keep the text after the first "=" (a key never holds one).
            value = text.partition("=")[2].strip() if override.is_sweep_override() else _as_override(override.value())
            parsed[override.get_key_element().lstrip("+")] = value
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
        run.error = first_line(failure.get("error") or "") or f"unknown error ({FAILURE} has no message)"
    elif run.results is None:
        run.error = f"no {RESULTS} or {FAILURE}: killed, or still running"
    return run


# Settings and labels ------------------------------------------------------------------------------

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
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_as_override(item)}" for key, item in value.items()) + "}"
    return str(value)


def is_noise(key: str) -> bool:
    """Overrides left out of labels and columns: data and output paths, Hydra's own keys, unparsed deletions."""
    return key.startswith("~") or any(key == noise or key.startswith(noise) for noise in NOISE_KEYS)


def varying_settings(runs: Sequence[Run]) -> list[str]:
    """Override keys whose effective value differs between the runs (filled in where a run kept the default).

    Sets ``run.settings`` for every run; returns the keys in first-seen order.
    """
    overrides = [run.override_values for run in runs]
    keys = list(dict.fromkeys(key for values in overrides for key in values if not is_noise(key)))
    values = {key: [given[key] if key in given else configured_value(run.path, key)
                    for run, given in zip(runs, overrides, strict=True)] for key in keys}
    varying = [key for key in keys if len(set(values[key])) > 1]
    for index, run in enumerate(runs):
        run.settings = {key: values[key][index] for key in varying}
    return varying


def readable(value: str) -> str:
    """A setting as a label shows it: a float with more than ``LABEL_DIGITS`` significant digits rounded (Optuna
    draws ``0.0056115164153345``), anything else as written (``1.0``, ``3``, ``finetune``)."""
    try:
        number = float(value)
    except ValueError:
        return value
    rounded = f"{number:.{LABEL_DIGITS}g}"
    if value.lstrip("+-").isdigit() or not math.isfinite(number) or float(rounded) == number:
        return value
    return rounded


def assign_labels(runs: Sequence[Run]) -> None:
    """Label each run by its varying settings (floats rounded), else by its folder; a clash adds the parent
    folder's name."""
    for run in runs:
        run.label = " ".join(f"{key}={readable(value)}" for key, value in run.settings.items()) or run.path.name
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


# Searches -----------------------------------------------------------------------------------------


@dataclass
class SearchBest:
    """The best trial of an Optuna search (its sweep folder's ``optimization_results.yaml``) and its run folder."""

    results_file: Path
    params: dict[str, Any]
    value: Any
    run: Run | None  # None when no reported run used exactly these parameters


def _same(text: str | None, value: Any) -> bool:
    """Whether an override's value (as :func:`parse_overrides` writes it) is the parameter value Optuna saved."""
    if text is None:
        return False
    try:
        return float(text) == float(value)
    except (TypeError, ValueError):
        return text == _as_override(value)


def search_bests(runs: Sequence[Run]) -> list[SearchBest]:
    """For every sweep folder of ``runs`` where Optuna saved its best parameters, those and the run that used them
    (the best such run when several did: ``runs`` come best first). A multi-objective study has no one best."""
    found = []
    for sweep_dir in dict.fromkeys(run.path.parent for run in runs):
        content = _load_yaml(sweep_dir / SEARCH_RESULTS)
        params = content.get("best_params") if isinstance(content, dict) else None
        if not isinstance(params, dict):
            continue
        used = (run for run in runs if run.path.parent == sweep_dir
                and all(_same(run.override_values.get(key), value) for key, value in params.items()))
        found.append(SearchBest(sweep_dir / SEARCH_RESULTS, params, content.get("best_value"), next(used, None)))
    return found
