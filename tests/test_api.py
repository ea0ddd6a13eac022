"""The Python API (fit, load, predict) and the ``transferlab`` console command it mirrors."""

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import transferlab
from conftest import FAST, REPO
from transferlab.cli.main import main as console_main
from transferlab.run.folder import RunFolderError

CONSOLE = Path(sys.executable).parent / "transferlab"  # the console script pip installed beside this Python


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``transferlab ARGS`` in a new process, as a user types it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(CONSOLE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, image_folder):
    """One ``transferlab.fit`` on the generated colours, into its own run folder."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    result = transferlab.fit(image_folder, backbone="resnet18", mode="finetune", run_dir=run_dir,
                             overrides=[*FAST, "optimizer=adam", "optimizer.lr=0.001"])
    return result


def test_fit_writes_the_run_folder_a_command_line_run_writes(fitted, image_folder):
    run_dir = fitted.run_dir
    results = json.loads((run_dir / "results.json").read_text())
    assert fitted.results == results and fitted.best_val_acc == results["best_val_acc"]
    assert fitted.best_checkpoint == run_dir / "checkpoints" / "best.ckpt" and fitted.best_checkpoint.is_file()
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["data"]["root"] == str(image_folder) and config["backbone"]["name"] == "resnet18"
    assert config["optimizer"]["_target_"] == "torch.optim.Adam"
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert "mode=finetune" in overrides and "optimizer=adam" in overrides
    choices = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
    assert choices["optimizer"] == "adam" and choices["data"] == "image_folder"
    assert "Results written to" in (run_dir / "train.log").read_text()


def test_fit_load_predict_equals_the_console_predict_on_the_same_files(fitted, image_folder, tmp_path):
    files = sorted((image_folder / "val").rglob("*.png"))[::5]
    classifier = transferlab.load(fitted.best_checkpoint, device="cpu")
    assert classifier.class_names == ["blue", "green", "red"]
    predictions = classifier.predict(files, top_k=2)
    assert [p.path for p in predictions] == [str(f) for f in files]
    assert all(len(p.top_k) == 2 and p.label == p.top_k[0][0] and not p.error for p in predictions)

    listing = tmp_path / "inputs"
    listing.mkdir()
    for file in files:  # the same files, as a folder for the command line
        (listing / f"{file.parent.name}_{file.name}").symlink_to(file)
    done = console("predict", f"ckpt={fitted.best_checkpoint}", f"input={listing}", "top_k=2", "device=cpu",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = fitted.run_dir / "predictions.csv"  # the default: the checkpoint's run folder, not the working folder
    assert f"Predicted {len(files)} image(s) on cpu: {written}" in done.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inputs"]
    with written.open(newline="") as file:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(file)}
    for file, prediction in zip(files, predictions, strict=True):
        row = rows[f"{file.parent.name}_{file.name}"]
        assert row["label"] == prediction.label
        assert float(row["score"]) == pytest.approx(prediction.score, abs=1e-6)
        assert row["top_k"].split(";")[1].split(":")[0] == prediction.top_k[1][0]


def test_fit_refuses_a_folder_that_holds_a_run_and_leaves_it_as_it_was(fitted, image_folder):
    config = (fitted.run_dir / ".hydra" / "config.yaml").read_bytes()
    with pytest.raises(RunFolderError, match="resume=true"):
        transferlab.fit(image_folder, run_dir=fitted.run_dir, overrides=[*FAST, "optimizer=sgd"])
    assert (fitted.run_dir / ".hydra" / "config.yaml").read_bytes() == config


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"mode": "finetun"}, "finetune"),
    ({"overrides": ["optimizer.lr=0.01", "trainer.max_epoch=3"]}, "trainer.max_epoch"),
    ({"backbone": "resnet_18"}, "resnet_18"),
])
def test_bad_arguments_raise_the_one_paragraph_error(tmp_path, image_folder, arguments, expected):
    with pytest.raises(transferlab.ConfigError, match=expected) as raised:
        transferlab.fit(image_folder, run_dir=tmp_path / "run", **{"overrides": FAST, **arguments})
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_data_folder_is_named(tmp_path):
    with pytest.raises(transferlab.ConfigError, match="no_such_folder"):
        transferlab.fit(tmp_path / "no_such_folder", run_dir=tmp_path / "run", overrides=FAST)


def test_console_lists_its_commands_and_names_a_mistyped_one(tmp_path):
    listing = console("--help", cwd=tmp_path)
    assert listing.returncode == 0
    for command in ("train", "find-lr", "predict", "evaluate", "export", "serve", "report", "advise"):
        assert f"\n  {command} " in listing.stdout
    typo = console("trian", cwd=tmp_path)
    assert typo.returncode == 2 and "Did you mean 'train'?" in typo.stderr


def test_a_commands_own_help_passes_through(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["transferlab", "train", "--help"])
    with pytest.raises(SystemExit) as exited:
        console_main()
    assert exited.value.code == 0
    hydra_help = capsys.readouterr().out  # Hydra's own --help: the config groups and the composed config
    assert "mode: feature_extract, finetune, gradual, partial, scratch" in hydra_help
    assert "Powered by Hydra" in hydra_help
    assert "optimizer:\n  _target_: torch.optim.SGD" in hydra_help

def test_every_python_m_command_is_a_console_command():
    from test_layering import COMMANDS as SHIMS  # the python -m transferlab.<command> modules
    from transferlab.cli.main import COMMANDS

    for shim in SHIMS:
        command = COMMANDS[shim.replace("_", "-")]
        assert importlib.import_module(f"transferlab.{shim}").main is importlib.import_module(command.module).main
