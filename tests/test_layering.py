"""The package's layers import downwards only: base modules, then data, model, run, cli, and the Python API
(transferlab.api) on top."""

import ast
from pathlib import Path

import transferlab

PACKAGE = Path(transferlab.__file__).parent
LAYERS = ["base", "data", "model", "run", "cli", "api"]  # each may import itself and those before it
# the python -m transferlab.<command> shims
COMMANDS = {"train", "predict", "evaluate", "export", "report", "advise", "serve", "find_lr"}


def layer(module: str) -> str:
    """``transferlab.data.scan`` -> ``data``; ``transferlab.api`` -> ``api``; other modules directly in the package are
    the base layer."""
    parts = module.split(".")
    if parts[1:] == ["api"]:
        return "api"
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else "base"


def transferlab_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name for name in names if name.startswith("transferlab.")}


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        if relative.parent == Path("transferlab") and relative.name in COMMANDS:
            continue
        for imported in transferlab_imports(path):
            if LAYERS.index(layer(imported)) > LAYERS.index(layer(module)):
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_no_module_is_longer_than_about_300_lines():
    assert {path.name: n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 320} == {}
