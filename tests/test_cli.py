"""The real command line in a subprocess: clear errors on bad input (the multirun is in test_report.py)."""


import sys

import pytest
import torch

from conftest import FAST, train_cli
from transferlab.cli.train import main as train_main


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected, exit_code",
    [
        ("data.root={missing}", "does not exist", 2),
        ("backbone.weights=IMAGENET9K", "is not a weights name of resnet18", 2),
        ("backbone.weights={garbage}", "is not a PyTorch file", 2),  # raised while Hydra builds the model
    ],
)
def test_bad_input_exits_with_a_message_not_a_traceback(tmp_path, image_folder, override, expected, exit_code):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    override = override.format(missing=tmp_path / "missing", garbage=garbage)
    cli = train_cli(tmp_path / "run", f"data.root={image_folder}", *FAST, override)
    output = cli.stdout + cli.stderr
    assert cli.returncode == exit_code, output[-2000:]
    assert expected in output
    assert "Traceback" not in output and "Error executing job" not in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_gpu_on_a_machine_without_one_is_named(tmp_path, image_folder):
    cli = train_cli(tmp_path / "run", f"data.root={image_folder}", *FAST, "trainer.accelerator=cuda")
    output = cli.stdout + cli.stderr
    assert cli.returncode == 2, output[-2000:]
    assert "`CUDAAccelerator` can not run on your system" in output and "Error executing job" not in output


def test_a_mistyped_choice_ends_the_command_before_hydra_composes(monkeypatch, capsys):
    """The check main() runs on the command line (the choices themselves: test_config.py)."""
    monkeypatch.setattr(sys, "argv", ["transferlab train", "mode=finetun"])
    with pytest.raises(SystemExit) as exited:
        train_main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "transferlab.train: error: mode=finetun: there is no conf/mode/finetun.yaml. Did you mean finetune? The "
        "choices of mode are: feature_extract, finetune, gradual, partial, scratch.\n")
