"""The real command line in a subprocess: a multirun over the modes, and clear errors on bad input."""

import json
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
def test_multirun_over_the_three_modes(tmp_path, image_folder):
    sweep_dir = tmp_path / "sweep"
    cli = run_cli("-m", "mode=scratch,finetune,feature_extract", f"data.root={image_folder}", *FAST,
                  "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    modes = [json.loads((run / "results.json").read_text())["mode"] for run in runs]
    assert modes == ["scratch", "finetune", "feature_extract"]
    for run in runs:
        assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        assert (run / ".hydra" / "config.yaml").is_file()
    assert "best val/acc" in cli.stdout + cli.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.root={missing}", "does not exist"),
        ("backbone.name=resnet19", "is not a torchvision classification model"),
        ("backbone.weights=IMAGENET9K", "is not a weights name of resnet18"),
        ("backbone.weights={missing}/w.pth", "does not exist"),
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
