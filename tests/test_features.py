"""The feature cache: a frozen backbone runs once, and the head trains as it would on images."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from transferlab.cli.build import build_datamodule
from transferlab.cli.train import train
from transferlab.data.features import CacheFeatures, FeatureViews, auto_views, feature_cache
from transferlab.errors import ConfigError
from transferlab.model.module import TransferClassifier
from transferlab.run import speed_probe

EXACT = ["mode=feature_extract", "data.augment=[]", "trainer.max_epochs=3", "optimizer=adam", "optimizer.lr=0.01"]
IMAGES = 36 + 36  # train + val images of the shared folder


class BackboneCalls:
    """Counts the images that ``TransferClassifier.features`` (the backbone's forward) sees."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = TransferClassifier.features

        def counted(module: TransferClassifier, images: torch.Tensor) -> torch.Tensor:
            self.images += len(images)
            return original(module, images)

        monkeypatch.setattr(TransferClassifier, "features", counted)


def head_state(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {key: value for key, value in state.items() if key.startswith("head.")}


@pytest.fixture
def fit(make_config, monkeypatch):
    """Train with ``overrides`` into ``run_dir``; returns the results and how many images the backbone saw."""

    def fit_into(run_dir: Path, *overrides: str) -> tuple[dict, BackboneCalls]:
        with monkeypatch.context() as patch:
            calls = BackboneCalls(patch)
            return train(make_config(*overrides, f"paths.output_dir={run_dir}")), calls

    return fit_into


def test_cached_features_train_the_head_to_the_same_weights_as_images(fit, resnet18_weights, tmp_path):
    weights = f"backbone.weights={resnet18_weights}"
    uncached, uncached_calls = fit(tmp_path / "images", *EXACT, weights, "data.cache_features=false")
    cached, cached_calls = fit(tmp_path / "features", *EXACT, weights)

    torch.testing.assert_close(head_state(tmp_path / "features"), head_state(tmp_path / "images"), rtol=1e-5, atol=1e-6)
    for cached_epoch, uncached_epoch in zip(cached["history"], uncached["history"], strict=True):
        assert cached_epoch == pytest.approx(uncached_epoch, rel=1e-4)
    assert cached["best_val_acc"] >= 0.8  # three classes: chance is 0.33
    # The backbone ran once over every image instead of every epoch (plus the sanity check's 2 val batches).
    assert cached_calls.images == IMAGES
    assert uncached_calls.images == 3 * IMAGES + 2 * 12


def test_augmented_views_are_cached_once_and_drawn_per_epoch(fit, tmp_path):
    results, calls = fit(tmp_path / "run", "mode=feature_extract", "data.cache_views=2",
                         "trainer.max_epochs=3")
    assert calls.images == 2 * 36 + 36
    assert results["epochs_run"] == 3


def test_resumed_run_with_cached_views_ends_where_an_uninterrupted_one_does(fit, tmp_path):
    common = ["mode=feature_extract", "data.cache_views=3"]
    fit(tmp_path / "whole", *common, "trainer.max_epochs=4")
    fit(tmp_path / "resumed", *common, "trainer.max_epochs=2")
    fit(tmp_path / "resumed", *common, "trainer.max_epochs=4", "resume=true")
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    torch.testing.assert_close(head_state(tmp_path / "resumed"), head_state(tmp_path / "whole"), rtol=0, atol=0)


def test_views_are_drawn_from_seed_and_epoch_only():
    features = torch.arange(3 * 50 * 2, dtype=torch.float32).view(3, 50, 2)
    views = FeatureViews(features, torch.zeros(50, dtype=torch.long), seed=7)
    drawn = []
    for epoch in (0, 1, 0):
        views.set_epoch(epoch)
        drawn.append(views.chosen.clone())
    assert torch.equal(drawn[0], drawn[2]) and not torch.equal(drawn[0], drawn[1])
    assert set(drawn[0].tolist()) == {0, 1, 2}  # 50 draws of 3 views
    feature, _ = views[4]
    assert torch.equal(feature, features[views.chosen[4], 4])


def test_features_over_the_memory_budget_fall_back_to_images(fit, tmp_path):
    results, calls = fit(tmp_path / "run", *EXACT, "data.cache_max_gb=1e-9")
    assert calls.images > IMAGES  # the backbone ran every epoch
    assert results["epochs_run"] == 3


@pytest.mark.parametrize(("setting", "backbone_trains", "augmented", "views", "expected"), [
    ("auto", False, False, None, 1),  # exact: one view
    ("auto", False, True, 4, 4),
    ("auto", False, True, None, None),  # data.cache_views=null: fresh augmentation every epoch
    ("auto", False, True, "auto", "auto"),  # the default: views by the run's length
    ("auto", True, False, None, None),  # finetune: the features change every step
    (False, False, False, None, None),
    (True, False, False, 5, 1),  # no augmentation: every view would be the same
])
def test_cache_is_on_where_the_backbone_never_trains(setting, backbone_trains, augmented, views, expected):
    cache = feature_cache(setting, backbone_trains, augmented, views, max_gb=1.0)
    assert (cache.setting if cache else None) == expected
    if cache:
        assert isinstance(cache, CacheFeatures)


@pytest.mark.parametrize(("setting", "backbone_trains", "augmented", "views", "message"), [
    (True, True, False, None, "mode=feature_extract"),
    (True, False, True, None, "data.cache_views"),
    ("yes", False, False, None, "auto, true, false"),
    ("auto", False, True, 0, "data.cache_views=0 is not auto, null or a whole number of at least 1"),
    ("auto", False, True, "many", "data.cache_views='many'"),
])
def test_impossible_cache_settings_are_refused(setting, backbone_trains, augmented, views, message):
    with pytest.raises(ConfigError, match=message):
        feature_cache(setting, backbone_trains, augmented, views, max_gb=1.0)


@pytest.mark.parametrize(("max_epochs", "views"), [(1, 1), (10, 1), (25, 1), (26, 2), (50, 2), (51, 3), (175, 7),
                                                   (1000, 8), (-1, 8), (None, 8)])
def test_auto_views_follow_the_measured_rule(max_epochs, views):
    assert auto_views(max_epochs) == views  # one view per 25 epochs, at most 8 (docs/benchmarks.md)


@pytest.mark.parametrize(("overrides", "cache_images"), [
    (["mode=feature_extract"], False),  # one view: each image is read once, so decoded copies would save nothing
    (["mode=feature_extract", "data.augment=[]"], False),
    (["mode=feature_extract", "data.cache_views=2"], True),
    (["mode=feature_extract", "trainer.max_epochs=30"], True),  # auto: two views
    (["mode=feature_extract", "data.cache_views=null"], True),  # the backbone reads the images every epoch
    (["mode=finetune"], True),
])
def test_images_are_kept_decoded_only_where_they_are_read_more_than_once(make_config, tmp_path, overrides,
                                                                         cache_images):
    assert build_datamodule(make_config(*overrides), tmp_path).cache_images is cache_images


def test_feature_extract_caches_augmented_views_by_default(fit, tmp_path):
    results, calls = fit(tmp_path / "run", "mode=feature_extract", "trainer.max_epochs=3")
    assert calls.images == auto_views(3) * 36 + 36  # each view of the 36 train images, and the val images, once
    assert results["epochs_run"] == 3


def test_resumed_run_with_the_default_cache_and_probe_ends_where_an_uninterrupted_one_does(fit, tmp_path,
                                                                                          monkeypatch):
    figures = {("32-true", False): 10.0, ("32-true", True): 20.0}
    timed = []
    monkeypatch.setattr(speed_probe, "images_per_second", lambda *args, **kwargs: timed.append(args) or figures[
        (args[3], args[4])])
    monkeypatch.setattr(speed_probe, "MAX_SHARE", float("inf"))  # a short test run: the probe times at any cost
    defaults = ["mode=feature_extract", "speed_probe=true", "trainer.max_epochs=4"]
    fit(tmp_path / "whole", *defaults)
    assert len(timed) == 2  # both formats, at inference
    with pytest.raises(SIGTERMException):
        fit(tmp_path / "resumed", *defaults, "+callbacks.stop._target_=interruptions.SignalAtBatch",
            "+callbacks.stop.epoch=2", "+callbacks.stop.batch=1")
    timed.clear()
    fit(tmp_path / "resumed", *defaults, "resume=true")
    assert timed == []  # the choice came from the interrupted run's speed_probe.json
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    torch.testing.assert_close(head_state(tmp_path / "resumed"), head_state(tmp_path / "whole"), rtol=0, atol=0)
