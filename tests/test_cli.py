"""The real command line in a subprocess: clear errors on bad input (the multirun is in test_report.py)."""


import sys

import pytest
import torch

from conftest import FAST, train_cli
from transferlab.cli.train import main as train_main


@pytest.mark.slow
def test_a_run_with_bad_input_exits_2_with_its_message_not_a_traceback(tmp_path, image_folder):
    """The real process: exit code and output as a shell sees them."""
    cli = train_cli(tmp_path / "run", f"data.root={image_folder}", *FAST, f"data.root={tmp_path / 'missing'}")
    output = cli.stdout + cli.stderr
    assert cli.returncode == 2, output[-2000:]
    assert "does not exist" in output
    assert "Traceback" not in output and "Error executing job" not in output


@pytest.mark.parametrize(
    "override, expected",
    [
        ("backbone.weights=IMAGENET9K", "is not a weights name of resnet18"),
        ("backbone.weights={garbage}", "is not a PyTorch file"),  # raised while Hydra builds the model
        pytest.param("trainer.accelerator=cuda", "`CUDAAccelerator` can not run on your system",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")),
    ],
)
def test_bad_input_ends_the_command_with_exit_code_2_and_its_message(tmp_path, image_folder, monkeypatch, capsys,
                                                                    override, expected):
    """The entry point the command runs (main), in this process."""
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    override = override.format(garbage=garbage)
    monkeypatch.setattr(sys, "argv", ["transferlab train", f"hydra.run.dir={tmp_path / 'run'}",
                                      f"data.root={image_folder}", *FAST, override])
    with pytest.raises(SystemExit) as exited:
        train_main()
    output = "".join(capsys.readouterr())
    assert exited.value.code == 2, output[-2000:]
    assert expected in output
    assert "Traceback" not in output and "Error executing job" not in output


def test_a_mistyped_choice_ends_the_command_before_hydra_composes(monkeypatch, capsys):
    """The check main() runs on the command line (the choices themselves: test_config.py)."""
    monkeypatch.setattr(sys, "argv", ["transferlab train", "mode=finetun"])
    with pytest.raises(SystemExit) as exited:
        train_main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "transferlab.train: error: mode=finetun: there is no conf/mode/finetun.yaml. Did you mean finetune? The "
        "choices of mode are: feature_extract, finetune, gradual, partial, scratch.\n")
