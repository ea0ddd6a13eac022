"""Hyper-parameter search with the Optuna sweeper (``hydra/sweeper=search``): the preset, its conditional
parameter, and a real search through the command line with its report."""

import json
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from conftest import CONFIG_DIR, FAST, run_train
from transferlab.run import report_runs
from transferlab.run.search_space import mode_settings

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
STAGES = "mode.trainable_stages"


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def interval(text: str) -> tuple[float, float]:
    """The bounds of a sweep such as ``tag(log, interval(1e-6, 1e-2))``, read by Hydra's parser."""
    sweep = OverridesParser.create().parse_overrides([f"key={text}"])[0].value()
    return sweep.start, sweep.end


def same_params(used: dict[str, str], best: dict) -> bool:
    """Whether a trial's overrides hold exactly the parameters Optuna saved (numbers compared as numbers)."""
    return all(key in used and (float(used[key]) == value if isinstance(value, int | float) else used[key] == value)
               for key, value in best.items())


def test_the_search_preset_maximises_val_acc_with_a_seeded_tpe_over_the_default_space():
    sweeper = compose_train("hydra/sweeper=search").hydra.sweeper
    assert sweeper._target_ == OPTUNA_SWEEPER
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    assert (sweeper.direction, sweeper.n_jobs, sweeper.max_failure_rate) == ("maximize", 1, 1.0)
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "mode"}
    assert sweeper.params["optimizer.lr"].startswith("tag(log,")
    assert sweeper.custom_search_space == "transferlab.run.search_space.mode_settings"

    sweeper = compose_train("hydra/sweeper=search", "hydra.sweeper.n_trials=30", "hydra.sweeper.sampler.seed=7",
                            "hydra/sweeper/sampler=random").hydra.sweeper
    assert (sweeper.n_trials, sweeper.sampler.seed) == (30, 7)
    assert sweeper.sampler._target_ == "optuna.samplers.RandomSampler" and sweeper.direction == "maximize"


def draw_stages(cfg, mode: str, trials: int = 30) -> list[int | None]:
    """``mode.trainable_stages`` as ``mode_settings`` draws it in ``trials`` trials of ``mode`` (None: not drawn)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(trials):
        trial = study.ask()
        trial.suggest_categorical("mode", [mode])
        mode_settings(cfg, trial)
        drawn.append(trial.params.get(STAGES))
        study.tell(trial, 0.5)
    return drawn


def test_trainable_stages_is_drawn_only_for_partial_and_between_one_and_the_stages_less_one():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # mode_settings reads conf/mode/
        resnet = compose(config_name="train")
        assert set(draw_stages(resnet, "partial")) == {1, 2, 3}  # ResNet-18: 4 stages (0 and 4: other modes)
        assert set(draw_stages(compose(config_name="train", overrides=["backbone=vgg16"]), "partial")) == {1, 2, 3, 4}
        for mode in ("finetune", "feature_extract", "gradual", "scratch"):
            assert draw_stages(resnet, mode, trials=1) == [None]

        # The command line's own value stays: a fixed one is a user attribute of the trial.
        trial = optuna.create_study().ask()
        trial.suggest_categorical("mode", ["partial"])
        trial.set_user_attr(STAGES, 2)
        mode_settings(resnet, trial)
        assert STAGES not in trial.params


@pytest.mark.slow
def test_a_search_runs_its_trials_in_the_space_and_reports_the_best(tmp_path, image_folder):
    sweep_dir = tmp_path / "sweep"
    lr_space = "tag(log, interval(1e-3, 1e-1))"  # not the preset's: the command line replaces it
    # Seed 0 gives the trials feature_extract, partial, feature_extract: the conditional parameter both ways.
    cli = run_train("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
                    f"optimizer.lr={lr_space}", "mode=choice(feature_extract, partial)", f"data.root={image_folder}",
                    *FAST, "trainer.max_epochs=1", "~callbacks.tensorboard_images", f"hydra.sweep.dir={sweep_dir}",
                    cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]

    trials = sorted(path.parent for path in sweep_dir.glob("*/results.json"))
    assert [path.name for path in trials] == ["0", "1", "2"]
    weight_decay_space = compose_train("hydra/sweeper=search").hydra.sweeper.params["optimizer.weight_decay"]
    accuracy, used, trainable = {}, {}, {}
    for trial in trials:
        params = report_runs.parse_overrides(yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()))
        results = json.loads((trial / "results.json").read_text())
        low, high = interval(lr_space)
        assert low <= float(params["optimizer.lr"]) <= high
        low, high = interval(weight_decay_space)
        assert low <= float(params["optimizer.weight_decay"]) <= high
        assert results["mode"] == params["mode"]  # the drawn mode is the one the run trained in
        assert (STAGES in params) == (params["mode"] == "partial")
        if STAGES in params:
            assert 1 <= int(params[STAGES]) <= 3
        accuracy[trial.name], used[trial.name] = results["best_val_acc"], params
        trainable.setdefault(params["mode"], []).append((results["params_trainable"], results["params_total"]))
    assert set(trainable) == {"feature_extract", "partial"}
    head_only = max(count for count, _ in trainable["feature_extract"])
    assert all(head_only < count < total for count, total in trainable["partial"])  # some stages, not all

    search = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = next(name for name, params in used.items() if same_params(params, search["best_params"]))
    assert accuracy[best] == max(accuracy.values()) == search["best_value"]

    markdown = (sweep_dir / "summary.md").read_text()
    best_line = next(line for line in markdown.splitlines() if line.startswith(f"- `{best}`"))
    assert f"best val/acc {accuracy[best]:.4f}" in best_line
    assert all(f"{key}={value}" in best_line for key, value in used[best].items()
               if key in search["best_params"])
    with Image.open(sweep_dir / "curves.png") as image:
        image.verify()
        assert image.format == "PNG"
    rows = Path(sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("label,optimizer.lr,optimizer.weight_decay,mode,")
