"""Launcher presets for sweeps that outgrow one process: SLURM (submitit) and local parallel (joblib).

SLURM itself cannot run here: composing the presets with the real config is what covers them. The
local launchers run a real sweep through the command line.
"""

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONFIG_DIR, FAST, run_train

SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True).hydra


def launcher_config(*overrides: str):
    return hydra_config(*overrides).launcher


@pytest.mark.parametrize("launcher, target", [
    ("slurm_gpu", SLURM),              # transferlab's presets (conf/hydra/launcher/)
    ("local_parallel", JOBLIB),
    ("submitit_slurm", SLURM),         # the plugins' own configs
    ("submitit_local", SUBMITIT_LOCAL),
    ("joblib", JOBLIB),
])
def test_every_launcher_composes_with_the_real_config(launcher, target):
    assert launcher_config(f"hydra/launcher={launcher}")._target_ == target


def test_the_slurm_preset_asks_for_one_gpu_per_task_and_takes_overrides():
    hydra = hydra_config("hydra/launcher=slurm_gpu", "hydra.sweep.dir=/shared/sweep")
    slurm = hydra.launcher
    assert (slurm.nodes, slurm.tasks_per_node, slurm.gpus_per_node) == (1, 1, 1)
    assert slurm.partition is None and slurm.max_num_timeout == 0
    assert slurm.timeout_min > 0 and slurm.cpus_per_task > 0 and slurm.mem_gb > 0
    assert slurm.submitit_folder == "/shared/sweep/.submitit/%j"  # the jobs' logs, beside the runs

    slurm = launcher_config("hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                            "+hydra.launcher.additional_parameters.mail-type=END")
    assert (slurm.partition, slurm.timeout_min, slurm.gpus_per_node) == ("gpu", 30, 1)
    assert slurm.additional_parameters["mail-type"] == "END"


def test_the_local_parallel_preset_runs_two_jobs_at_a_time():
    assert launcher_config("hydra/launcher=local_parallel").n_jobs == 2
    assert launcher_config("hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4").n_jobs == 4


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "modes"), [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["scratch", "feature_extract"]),  # two at once
    (["hydra/launcher=submitit_local"], ["feature_extract"]),  # the submitit plugin's job path, without sbatch
], ids=["joblib", "submitit_local"])
def test_a_local_launcher_runs_the_sweep_and_its_report(tmp_path, image_folder, launcher, modes):
    sweep_dir = tmp_path / "sweep"
    cli = run_train("-m", *launcher, f"mode={','.join(modes)}", f"data.root={image_folder}", *FAST,
                    "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]

    jobs = [str(number) for number in range(len(modes))]
    assert [json.loads((sweep_dir / job / "results.json").read_text())["mode"] for job in jobs] == modes
    for job in jobs:
        assert (sweep_dir / job / ".hydra" / "overrides.yaml").is_file()
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
    with (sweep_dir / "summary.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(modes) and {row["status"] for row in rows} == {"ok"}
    assert sorted(Path(row["run_dir"]).name for row in rows) == jobs
