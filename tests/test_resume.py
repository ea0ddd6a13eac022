"""Interrupted runs lose nothing: SIGKILL + resume equals an uninterrupted run, SIGTERM writes last.ckpt,
NaN stops the run keeping the last good checkpoint, checkpoint and results files are written atomically."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST
from interruptions import PoisonAtBatch
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.files import write_json_atomically
from transferlab.run.guards import NonFiniteLossError
from transferlab.run.resume import AtomicCheckpointIO, checkpoint_to_resume

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"train_time_s", "train_images_per_s", "best_checkpoint"}
EXACT = ["trainer.deterministic=true", "data.batch_size=8", "trainer.max_epochs=4", "data.num_workers=0"]


def run_cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "transferlab.train", f"hydra.run.dir={run_dir}", *overrides],
                          cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def figures(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {key: value for key, value in results.items() if key not in TIMING_KEYS}


@pytest.mark.slow
def test_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, image_folder):
    # gradual, killed after its unfreeze epoch: frozen and trainable states, the optimizer's filled
    # backbone group, OneCycle's per-step schedule and the random generators all cross the restart
    mode = ["mode=gradual", "mode.unfreeze_at_epoch=1", "scheduler=onecycle"]
    common = [f"data.root={image_folder}", *FAST, *EXACT, *mode]
    assert run_cli(tmp_path / "whole", *common).returncode == 0

    killed = run_cli(tmp_path / "resumed", *common, "+callbacks.kill._target_=interruptions.KillAtEpoch",
                     "+callbacks.kill.epoch=2")
    assert killed.returncode == -9  # SIGKILL after epoch 2 of 4
    assert not (tmp_path / "resumed" / "results.json").exists()
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1

    resumed = run_cli(tmp_path / "resumed", *common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert figures(tmp_path / "resumed") == figures(tmp_path / "whole")
    whole, again = final_state(tmp_path / "whole"), final_state(tmp_path / "resumed")
    assert whole.keys() == again.keys()
    for key in whole:
        assert torch.equal(whole[key], again[key]), key


@pytest.mark.slow
def test_sigterm_writes_last_checkpoint_mid_epoch_and_the_run_resumes(tmp_path, image_folder):
    common = [f"data.root={image_folder}", *FAST, *EXACT]
    stopped = run_cli(tmp_path / "run", *common, "+callbacks.term._target_=interruptions.TerminateAtBatch",
                      "+callbacks.term.epoch=1", "+callbacks.term.batch=1")
    assert stopped.returncode == 128 + 15  # ended by SIGTERM
    assert not (tmp_path / "run" / "results.json").exists()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 5 + 2  # 5 batches an epoch; 2 into epoch 1
    assert "saved" in stopped.stdout + stopped.stderr and "resume=true" in stopped.stdout + stopped.stderr

    resumed = run_cli(tmp_path / "run", *common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs_run"] == 4


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint(make_config, tmp_path):
    config = make_config("trainer.max_epochs=3", "data.batch_size=8")
    with pytest.raises(NonFiniteLossError) as error:
        train(config, [PoisonAtBatch(epoch=1, batch=2)])
    assert "epoch 1, batch 2" in str(error.value) and "optimizer.lr" in str(error.value)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(tensor).all() for tensor in last["state_dict"].values() if tensor.is_floating_point())


def test_nan_in_the_first_epoch_names_no_checkpoint_that_does_not_exist(make_config, tmp_path):
    with pytest.raises(NonFiniteLossError) as error:
        train(make_config("trainer.max_epochs=1", "data.batch_size=8"), [PoisonAtBatch(epoch=0, batch=1)])
    assert "epoch 0, batch 1" in str(error.value) and "checkpoint" not in str(error.value)


def test_resume_finds_last_ckpt_whatever_the_callbacks_group_holds(make_config, tmp_path):
    train(make_config("trainer.max_epochs=1"))
    resumed = train(make_config("~callbacks.last_checkpoint", "~callbacks.model_checkpoint", "resume=true"))
    assert resumed["epochs_run"] == 2 and [h["epoch"] for h in resumed["history"]] == [0, 1]


def test_resume_without_a_checkpoint_says_where_to_resume(tmp_path):
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        checkpoint_to_resume(tmp_path)


def test_resume_refuses_a_checkpoint_with_pickled_code(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="refused"):
        checkpoint_to_resume(tmp_path)
    assert not marker.exists()


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def crash(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the half-written temporary is gone


def test_a_crash_while_writing_results_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json_atomically(path, {"best_val_acc": 0.5})
    monkeypatch.setattr("json.dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_json_atomically(path, {"best_val_acc": 0.9})
    assert json.loads(path.read_text()) == {"best_val_acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
