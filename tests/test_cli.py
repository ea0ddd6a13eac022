"""The real command line in a subprocess: clear errors on bad input (the multirun is in test_report.py)."""


import pytest

from conftest import FAST, train_cli


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
    cli = train_cli(tmp_path / "run", f"data.root={image_folder}", *FAST, override.format(missing=tmp_path / "missing"))
    output = cli.stdout + cli.stderr
    assert cli.returncode != 0
    assert expected in output
    assert "Traceback" not in output
