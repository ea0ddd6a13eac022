"""Interrupted runs lose nothing: kill -9, SIGTERM or Ctrl-C + resume equals an uninterrupted run, NaN stops
the run keeping the last good checkpoint, checkpoint and results files are written atomically."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from conftest import FAST, train_cli
from interruptions import PoisonAtBatch, PoisonBufferBeforeValidation, SignalAtBatch
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.files import write_json_atomically
from transferlab.run.guards import NonFiniteLossError
from transferlab.run.resume import AtomicCheckpointIO, checkpoint_to_resume

TIMING_KEYS = {"train_time_s", "train_images_per_s", "best_checkpoint"}
EXACT = ["trainer.deterministic=true", "data.batch_size=8", "trainer.max_epochs=4", "data.num_workers=0"]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def figures(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {key: value for key, value in results.items() if key not in TIMING_KEYS}


# gradual, interrupted after its unfreeze epoch: frozen and trainable states, the optimizer's filled
# backbone group, OneCycle's per-step schedule and the random generators all cross the restart
EXACT_GRADUAL = [*FAST, *EXACT, "mode=gradual", "mode.unfreeze_at_epoch=1", "scheduler=onecycle"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, image_folder: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finished = train_cli(run_dir, f"data.root={image_folder}", *EXACT_GRADUAL)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same figures (timings aside) and bit-identical final weights, buffers and optimizer-free state."""
    assert figures(run_dir) == figures(reference)
    final, expected = final_state(run_dir), final_state(reference)
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


@pytest.mark.slow
def test_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, image_folder, uninterrupted):
    common = [f"data.root={image_folder}", *EXACT_GRADUAL]
    killed = train_cli(tmp_path / "resumed", *common, "+callbacks.kill._target_=interruptions.KillAtEpoch",
                     "+callbacks.kill.epoch=2")
    assert killed.returncode == -9  # SIGKILL after epoch 2 of 4
    assert not (tmp_path / "resumed" / "results.json").exists()
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1

    resumed = train_cli(tmp_path / "resumed", *common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "resumed", uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "exit_code"), [("SIGTERM", 128 + 15), ("SIGINT", 128 + 2)])
def test_a_run_stopped_mid_epoch_by_a_signal_resumes_bit_identically(tmp_path, image_folder, uninterrupted,
                                                                     signal_name, exit_code):
    common = [f"data.root={image_folder}", *EXACT_GRADUAL]
    stopped = train_cli(tmp_path / "run", *common, "+callbacks.stop._target_=interruptions.SignalAtBatch",
                      "+callbacks.stop.epoch=2", "+callbacks.stop.batch=1", f"+callbacks.stop.signal={signal_name}")
    assert stopped.returncode == exit_code, stopped.stderr[-3000:]
    assert not (tmp_path / "run" / "results.json").exists()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * 5  # the end of epoch 1: 5 batches an epoch
    assert "resume=true runs it again from the start of epoch 2" in stopped.stdout + stopped.stderr
    if signal_name == "SIGINT":  # the same last.ckpt as SIGTERM leaves (asserted above), so the same resume from it
        return
    resumed = train_cli(tmp_path / "run", *common, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "run", uninterrupted)


def test_a_run_stopped_in_its_first_epoch_resumes_from_the_beginning(make_config, tmp_path):
    reference = train(make_config("trainer.max_epochs=1", "paths.output_dir=" + str(tmp_path / "reference")))
    with pytest.raises(SIGTERMException):
        train(make_config("trainer.max_epochs=1"), [SignalAtBatch(epoch=0, batch=1)])
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    resumed = train(make_config("trainer.max_epochs=1", "resume=true"))
    assert resumed["history"] == reference["history"]


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


def test_non_finite_weights_with_a_finite_loss_stop_the_run_before_a_checkpoint(make_config, tmp_path):
    with pytest.raises(NonFiniteLossError) as error:
        train(make_config("trainer.max_epochs=3", "data.batch_size=8"), [PoisonBufferBeforeValidation(epoch=1)])
    assert "epoch 1" in str(error.value) and "backbone.bn1.running_var" in str(error.value)
    for name in ("last.ckpt", "best.ckpt"):
        saved = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert saved["epoch"] == 0, name
        assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point()), name


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
