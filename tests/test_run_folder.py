"""A run folder belongs to one run: a live run locks it, a finished one is only resumed, an unwritable one is named."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_train, train_cli
from transferlab.files import temporary_name
from transferlab.run import folder as run_folder

DIES_AT_ONCE = [sys.executable, "-c", "pass"]


def dead_pid() -> int:
    process = subprocess.Popen(DIES_AT_ONCE)
    process.wait()
    return process.pid


def finished_run(run_dir: Path) -> Path:
    """The files a finished run leaves (their contents do not matter: nothing may read or change them)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "results.json", ".hydra/config.yaml", "train.log"):
        (run_dir / name).write_text(f"the first run's {name}")
    return run_dir


def contents(run_dir: Path) -> dict[str, str]:
    return {str(path.relative_to(run_dir)): path.read_text() for path in run_dir.rglob("*")
            if path.is_file() and path.name != ".lock"}


def test_a_new_run_into_a_finished_run_folder_is_refused_and_changes_nothing(tmp_path, image_folder):
    run_dir = finished_run(tmp_path / "run")
    before = contents(run_dir)
    refused = train_cli(run_dir, f"data.root={image_folder}", "backbone.weights=null")
    assert refused.returncode == 2
    assert "already holds a run" in refused.stderr and "resume=true" in refused.stderr
    assert "hydra.run.dir=" in refused.stderr and "Traceback" not in refused.stderr
    assert contents(run_dir) == before  # Hydra's .hydra/ and train.log too


def test_a_second_run_into_a_live_run_folder_stops_and_names_the_first(tmp_path, image_folder):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from transferlab.run.folder import claim; "
         f"claim({str(run_dir)!r}, resume=False); print('claimed', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        second = train_cli(run_dir, f"data.root={image_folder}", "backbone.weights=null")
        assert second.returncode == 2, second.stderr[-2000:]
        assert "Another run is using the run folder" in second.stderr and f"process {holder.pid}" in second.stderr
        with pytest.raises(run_folder.RunFolderError, match=f"process {holder.pid}"):
            run_folder.claim(run_dir, resume=True)  # resuming it waits for nothing either
        assert sorted(os.listdir(run_dir)) == [".lock"]  # nothing of the second run's was written
    finally:
        holder.kill()
        holder.wait()
    assert run_folder.claim(run_dir, resume=False)  # the lock went with the process
    run_folder.release(run_dir)


def test_an_unwritable_run_folder_is_named_with_the_setting_that_moves_it(tmp_path, image_folder):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    failed = run_train(f"hydra.run.dir={not_a_folder / 'run'}", f"data.root={image_folder}", "backbone.weights=null",
                       cwd=tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"Cannot write the run folder {not_a_folder / 'run'}" in failed.stderr
    assert "hydra.run.dir=" in failed.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_run_folder_is_named_with_the_setting_that_moves_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o555)
    with pytest.raises(run_folder.RunFolderError, match="hydra.run.dir="):
        run_folder.claim(run_dir, resume=False)


def test_temporaries_of_killed_writers_are_removed_when_the_folder_is_claimed(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = checkpoints / temporary_name("last.ckpt").replace(f".{os.getpid()}.", f".{dead_pid()}.")
    live = checkpoints / temporary_name("best.ckpt")  # this process's: still being written
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"a checkpoint being written")
    with run_folder.claimed(tmp_path / "run", resume=True):
        assert not stale.exists() and live.exists()


def test_a_folder_is_claimed_once_per_process(tmp_path):
    with run_folder.claimed(tmp_path, resume=False):
        assert not run_folder.claim(tmp_path, resume=False)  # train() inside Hydra's claim
        with run_folder.claimed(tmp_path, resume=False):
            pass
        other = os.open(tmp_path / ".lock", os.O_RDWR)  # another open of the file: another run's lock
        try:
            with pytest.raises(BlockingIOError):  # the inner block did not release the outer claim
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
