"""Every config group composes, and the experiment presets say what the classic recipes say."""

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import CONFIG_DIR
from transferlab.cli.overrides import check_group_choices, exit_on_bad_choices, group_choices
from transferlab.cli.train import CONFIG_DIR as TRAIN_CONFIG_DIR  # where the entry point reads conf/ from
from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.errors import ConfigError
from transferlab.model.modes import MODES

GROUPS = ["data", "backbone", "head", "mode", "loss", "optimizer", "scheduler", "experiment"]


def compose_preset(name: str):
    """The config exactly as a user gets it from ``experiment=name`` (no test shrinking)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}"])


CHOICES = [(group, path.stem) for group in GROUPS for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))]


@pytest.mark.parametrize("group, choice", CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_choice_composes(make_config, group, choice):
    cfg = make_config(f"{group}={choice}")
    assert cfg.mode.name in MODES
    if cfg.scheduler is not None:
        assert cfg.scheduler.interval in {"epoch", "step"}
    assert callable(instantiate(cfg.optimizer))


def test_defaults_are_the_classic_recipe(make_config):
    cfg = make_config()
    assert cfg.backbone.name == "resnet18" and cfg.mode.name == "finetune"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.scheduler.step_size == 7 and cfg.scheduler.gamma == 0.1
    assert cfg.data.download.url.endswith("hymenoptera_data.zip")


def test_resnet18_preset():
    cfg = compose_preset("resnet18_finetune")
    assert ((cfg.backbone.name, cfg.mode.name, cfg.data.batch_size, cfg.trainer.max_epochs)
            == ("resnet18", "finetune", 4, 25))
    assert ((cfg.optimizer.lr, cfg.optimizer.momentum, cfg.scheduler.step_size, cfg.scheduler.gamma)
            == (0.001, 0.9, 7, 0.1))
    assert cfg.backbone.classifier is None and cfg.backbone.stages is None  # fc, layer1..layer4: from the network


def test_vgg16_preset():
    cfg = compose_preset("vgg16_feature_extract")
    assert (cfg.backbone.name, cfg.backbone.classifier, cfg.mode.name) == ("vgg16", "classifier", "feature_extract")
    assert list(cfg.head.hidden) == [4096, 4096] and cfg.head.dropout == 0.5
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-5


def test_resnet50_preset():
    cfg = compose_preset("resnet50_gradual")
    assert (cfg.backbone.name, cfg.mode.name) == ("resnet50", "gradual")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.weight_decay == 1e-4
    assert cfg.scheduler._target_.endswith("OneCycleLR") and cfg.scheduler.max_lr == cfg.optimizer.lr
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm) == (0.1, "value")


@pytest.mark.parametrize("override, valid", [("mode=frozen", "feature_extract"), ("optimizer=rmsprop", "adamw"),
                                             ("scheduler=plateau", "onecycle"), ("backbone=alexnet2", "vgg16")])
def test_unknown_choice_lists_the_valid_ones(make_config, override, valid):
    group = override.split("=")[0]
    with pytest.raises(ConfigCompositionException) as error:
        make_config(override)
    assert f"Available options in '{group}'" in str(error.value) and valid in str(error.value)


def test_the_choice_check_knows_every_group_and_choice_of_the_entry_points_config_dir():
    groups = {path.name for path in Path(TRAIN_CONFIG_DIR).iterdir() if path.is_dir() and any(path.glob("*.yaml"))}
    assert set(group_choices(TRAIN_CONFIG_DIR)) == groups - {"hydra"} >= set(GROUPS)
    valid = [f"{group}={choice}" for group, names in group_choices(TRAIN_CONFIG_DIR).items() for choice in names]
    check_group_choices([*valid, "experiment=null", "~experiment", "+experiment=resnet18_finetune",
                         "backbone.name=efficientnet_b0", "hydra/launcher=basic", "mode=glob(*)",
                         "mode=scratch,finetune"], TRAIN_CONFIG_DIR)  # none refused


@pytest.mark.parametrize("overrides, message", [
    (["mode=finetun"], "mode=finetun: there is no conf/mode/finetun.yaml. Did you mean finetune? The choices of mode "
                       "are: feature_extract, finetune, gradual, partial, scratch."),
    (["optimizer=adamw", "scheduler=cosin"], "scheduler=cosin: there is no conf/scheduler/cosin.yaml. Did you mean "
                                             "cosine? The choices of scheduler are: cosine, none, onecycle, step."),
    (["mode=scratch,finetun"], "mode=scratch,finetun: there is no conf/mode/finetun.yaml. Did you mean finetune?"),
    (["+experiment=resnet18_finetun"], "Did you mean resnet18_finetune? The choices of experiment are:"),
    (["data=image_folder", "data.root=~/photos"], "data.root=~/photos: Hydra's override grammar does not take '~' in "
                                                   "a value, and the shell does not expand it after '='. Write "
                                                   "data.root=$HOME/photos"),
    (["backbone=resnet101"], "backbone=resnet101: there is no conf/backbone/resnet101.yaml. resnet101 is a "
                             "torchvision model without a preset: backbone.name=resnet101 builds it with the default "
                             "preset (its classifier and stages found from the network). The choices of backbone "
                             "are: resnet18, resnet50, timm, torchvision, vgg16."),
])
def test_a_choice_conf_lacks_names_the_closest_and_every_valid_one(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_group_choices(overrides, TRAIN_CONFIG_DIR)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_command_line_check_exits_2_with_one_paragraph_before_hydra_composes(capsys):
    with pytest.raises(SystemExit) as exit_code:
        exit_on_bad_choices("transferlab.train", ["-m", "mode=scratch,finetun", "data=image_folde"], TRAIN_CONFIG_DIR)
    assert exit_code.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("transferlab.train: error: mode=scratch,finetun: there is no conf/mode/finetun.yaml.")
    assert "data=image_folde: there is no conf/data/image_folde.yaml. Did you mean image_folder?" in stderr
    assert stderr.count("\n") == 1
    exit_on_bad_choices("transferlab.train", ["-m", "mode=scratch,finetune"], TRAIN_CONFIG_DIR)  # no exit


def test_every_mode_file_is_a_registered_mode_with_its_callback(make_config):
    assert {path.stem for path in (Path(CONFIG_DIR) / "mode").glob("*.yaml")} == set(MODES)
    for name, mode in MODES.items():
        cfg = make_config(f"mode={name}")
        callback = mode.callback(cfg.mode)
        assert (callback is not None) == (name in ("feature_extract", "gradual", "partial"))
        assert mode.initial_weights("DEFAULT") == (None if name == "scratch" else "DEFAULT")


def test_the_data_modules_code_defaults_are_the_configs():
    """One default each: a setting left out of a config behaves as the shipped config says."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        data = compose(config_name="train", overrides=["data=image_folder"]).data
    parameters = inspect.signature(ImageFolderDataModule).parameters
    # device_augment: the config's auto is resolved for the run's trainer and mode (build_datamodule); the class
    # takes the resolved true/false
    compared = [key for key in data if key in parameters and key not in ("root", "augment", "device_augment")]
    assert {"cache_images", "cache_max_gb", "cache_features", "cache_views", "pin_memory"} <= set(compared)
    for key in compared:
        assert parameters[key].default == data[key], key
