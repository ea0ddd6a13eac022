"""The real command line in a subprocess: clear errors on bad input (the multirun is in test_report.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "transferlab.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.root={missing}", "does not exist"),
        ("backbone.weights=IMAGENET9K", "is not a weights name of resnet18"),
        ("mode=frozen", "Available options in 'mode'"),
    ],
)
def test_bad_input_exits_with_a_message_not_a_traceback(tmp_path, image_folder, override, expected):
    cli = run_cli(f"data.root={image_folder}", f"hydra.run.dir={tmp_path / 'run'}", *FAST,
                  override.format(missing=tmp_path / "missing"), cwd=tmp_path)
    output = cli.stdout + cli.stderr
    assert cli.returncode != 0
    assert expected in output
    assert "Traceback" not in output
