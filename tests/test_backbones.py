"""Tests for transferlab.backbones: names, weights (named, cached, local file, checkpoint), classifier removal.

Nothing here downloads: ``torch.hub.download_url_to_file`` is replaced by one that records the URL and
raises URLError, as it would offline.
"""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torchvision.models import ResNet18_Weights, get_model

from conftest import compose_config, make_image_folder
from transferlab.data.datamodule import ImageFolderDataModule
from transferlab.errors import ConfigError
from transferlab.model.backbones import build_backbone, is_weights_file, preprocessing_for

CACHE_NAME = ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1]


@pytest.fixture(autouse=True)
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs a download was attempted for; every attempt fails as if offline."""
    attempted: list[str] = []

    def offline(url: str, *args, **kwargs) -> None:
        attempted.append(url)
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return attempted


@pytest.fixture
def hub_dir(tmp_path: Path):
    """An empty torch hub cache, restored to the previous one afterwards."""
    previous = torch.hub.get_dir()
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(previous)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """State dict (with fc) of a seeded, randomly initialised torchvision resnet18."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return get_model("resnet18", weights=None).state_dict()


def without_fc(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def assert_same_tensors(network: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = network.state_dict()
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert different == []


# --- names -------------------------------------------------------------------------------------


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="not a torchvision classification model") as error:
        build_backbone("resnet_nonexistent", None)
    assert "resnet50" in str(error.value)


def test_unknown_weights_name_lists_valid_names(downloads: list[str]):
    with pytest.raises(ConfigError, match="IMAGENET9K_V7") as error:
        build_backbone("resnet18", "IMAGENET9K_V7")
    assert "IMAGENET1K_V1" in str(error.value)
    assert "DEFAULT" in str(error.value)
    assert downloads == []


@pytest.mark.parametrize(
    ("weights", "expected"),
    [("DEFAULT", False), ("IMAGENET1K_V1", False), ("x/y.pth", True), ("model.ckpt", True), (None, False)],
)
def test_is_weights_file(weights: str | None, expected: bool):
    assert is_weights_file(weights) is expected


# --- classifier removal --------------------------------------------------------------------------


@pytest.mark.parametrize("classifier", ["fc", None])
def test_resnet18_classifier_becomes_identity(classifier: str | None):
    built = build_backbone("resnet18", None, classifier)
    assert isinstance(built.network.fc, nn.Identity)
    assert built.num_features == 512
    assert built.head_state is None
    built.network.eval()
    with torch.no_grad():
        assert built.network(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_vgg16_whole_classifier_replaced():
    built = build_backbone("vgg16", None, "classifier")
    assert isinstance(built.network.classifier, nn.Identity)
    assert built.num_features == 25088
    built.network.eval()
    with torch.no_grad():
        assert built.network(torch.randn(1, 3, 32, 32)).shape == (1, 25088)


@pytest.mark.parametrize("name, width, stages", [("efficientnet_b0", 1280, ["features.6", "features.7"]),
                                                 ("mobilenet_v3_small", 1024, ["features.10", "features.11"])])
def test_any_torchvision_name_builds_from_the_default_preset(tmp_path: Path, name, width, stages):
    cfg = compose_config(tmp_path, f"backbone.name={name}", "mode=partial", "mode.trainable_stages=2")
    assert cfg.backbone.weights is None  # FAST: random init, nothing downloaded
    model = instantiate(cfg.model, class_names=["a", "b"])  # the classifier and stages found from the network
    assert model.head[-1].in_features == width
    assert [p.stage.name for p in model.stage_plan if p.start_epoch is not None] == stages
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_a_preset_classifier_that_another_architecture_lacks_says_how_to_fix_it(tmp_path: Path):
    cfg = compose_config(tmp_path, "backbone=vgg16", "backbone.name=resnet18").backbone
    with pytest.raises(ConfigError, match=r"backbone.classifier='classifier' is not a submodule of resnet18 .*"
                       r"backbone.classifier=null to replace resnet18's last nn.Linear \(fc\)"):
        build_backbone(cfg.name, cfg.weights, cfg.classifier)


# --- named weights from the hub cache --------------------------------------------------------------


def test_default_weights_load_from_hub_cache(hub_dir: Path, resnet18_state, downloads: list[str]):
    cached = hub_dir / "checkpoints" / CACHE_NAME
    cached.parent.mkdir(parents=True)
    torch.save(resnet18_state, cached)
    built = build_backbone("resnet18", "DEFAULT", "fc")
    assert downloads == []
    assert isinstance(built.network.fc, nn.Identity)
    assert_same_tensors(built.network, without_fc(resnet18_state))


def test_default_weights_offline_and_not_cached_explains_fix(hub_dir: Path, downloads: list[str]):
    with pytest.raises(ConfigError) as error:
        build_backbone("resnet18", "DEFAULT", "fc")
    message = str(error.value)
    assert str(hub_dir / "checkpoints" / CACHE_NAME) in message
    assert "backbone.weights=null" in message
    assert downloads == [ResNet18_Weights.DEFAULT.url]


# --- local state-dict files ----------------------------------------------------------------------


def test_state_dict_file_loads(tmp_path: Path, resnet18_state, downloads: list[str]):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    built = build_backbone("resnet18", str(path), "fc")
    assert built.head_state is None
    assert_same_tensors(built.network, without_fc(resnet18_state))
    assert downloads == []


def test_state_dict_of_other_architecture_does_not_fit(tmp_path: Path):
    path = tmp_path / "resnet50.pth"
    torch.save(get_model("resnet50", weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit backbone resnet18") as error:
        build_backbone("resnet18", str(path), "fc")
    assert str(path) in str(error.value)


def test_state_dict_with_missing_keys_does_not_fit(tmp_path: Path, resnet18_state):
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in resnet18_state.items() if not k.startswith("layer4.")}, path)
    with pytest.raises(ConfigError, match="does not fit backbone resnet18") as error:
        build_backbone("resnet18", str(path), "fc")
    assert "layer4." in str(error.value)


@pytest.mark.parametrize("content", [[torch.zeros(1)], {"conv1.weight": "not a tensor"}], ids=["list", "str-value"])
def test_file_that_is_not_a_state_dict_is_rejected(tmp_path: Path, content):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ConfigError, match="neither a state dict"):
        build_backbone("resnet18", str(path), "fc")


def test_missing_weights_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"), "fc")


# --- transferlab checkpoints ---------------------------------------------------------------------


def save_checkpoint(path: Path, backbone_state: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
    """A checkpoint laid out like Lightning's for a TransferClassifier trained on classes a, b."""
    state = {f"backbone.{k}": v for k, v in backbone_state.items()}
    state.update({f"head.{k}": v for k, v in head.items()})
    torch.save({"state_dict": state, "hyper_parameters": {"class_names": ["a", "b"]}, "epoch": 1}, path)


@pytest.fixture
def checkpoint(tmp_path: Path, resnet18_state) -> tuple[Path, dict[str, torch.Tensor]]:
    head = {"0.weight": torch.randn(2, 512), "0.bias": torch.randn(2)}
    path = tmp_path / "model.ckpt"
    save_checkpoint(path, without_fc(resnet18_state), head)
    return path, head


def test_checkpoint_with_same_classes_returns_head(checkpoint, resnet18_state):
    path, head = checkpoint
    built = build_backbone("resnet18", str(path), "fc", class_names=["a", "b"])
    assert_same_tensors(built.network, without_fc(resnet18_state))
    assert built.head_state is not None
    assert built.head_state.keys() == {"0.weight", "0.bias"}
    assert all(torch.equal(built.head_state[k], head[k]) for k in head)


def test_checkpoint_with_other_classes_loads_backbone_only(checkpoint, resnet18_state):
    path, _ = checkpoint
    built = build_backbone("resnet18", str(path), "fc", class_names=["a", "b", "c"])
    assert built.head_state is None
    assert_same_tensors(built.network, without_fc(resnet18_state))


# --- untrusted files -----------------------------------------------------------------------------


class CreatesFile:
    """Unpickles as ``open(path, "w")``: loading it with full pickle creates ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_file_with_code_in_pickle_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": CreatesFile(marker)}, path)
    with pytest.raises(ConfigError, match="refused") as error:
        build_backbone("resnet18", str(path), "fc")
    assert str(path) in str(error.value)
    assert not marker.exists()
    # The payload is live: an unrestricted load does run it, so the check above is meaningful.
    torch.load(path, weights_only=False)["conv1.weight"].close()
    assert marker.exists()


# --- input size --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, weights, smallest, why", [
    ("resnet18", None, 32, "its five stride-2 reductions take 32 px down to 1x1"),
    ("inception_v3", "DEFAULT", 75, "torchvision's min_size for its weights"),
    ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 384, "torchvision's min_size for its weights"),
])
def test_an_image_size_below_what_the_backbone_takes_is_refused(name, weights, smallest, why):
    preprocessing = preprocessing_for(name, weights)
    assert preprocessing.at_size(smallest).crop_size == smallest
    with pytest.raises(ConfigError) as error:
        preprocessing.at_size(smallest - 1)
    assert str(error.value).startswith(
        f"data.image_size={smallest - 1} is smaller than backbone {name} can take: its smallest input is "
        f"{smallest} px ({why}). Set data.image_size={smallest} or more;")


def test_the_data_module_refuses_image_size_1_before_reading_any_data(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, size=16, classes=("blue", "red"))
    with pytest.raises(ConfigError, match=r"^data.image_size=1 is smaller than backbone resnet18 can take: .* 32 px"):
        ImageFolderDataModule(str(root), preprocessing_for("resnet18", None), image_size=1)
    hparams = {"crop_size", "resize_size", "mean", "std", "interpolation"}  # what checkpoints store, as before
    assert set(preprocessing_for("resnet18", None).to_dict()) == hparams
