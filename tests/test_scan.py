"""The scan at setup: bad files stop or are skipped, odd modes load, warnings, cache, imbalance, tiny splits."""

import io
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import RESNET18, make_datamodule, make_image_folder, png_header
from transferlab.cli.build import build_model
from transferlab.cli.train import train
from transferlab.data import scan
from transferlab.errors import ConfigError
from transferlab.model.module import class_weights

BAD = {"corrupt.jpg": "truncated", "text.jpg": "not an image", "empty.png": "empty file", "loop.jpg": "link loop",
       "dangling.jpg": "broken link"}
ACCEPTED = ("gray.png", "cmyk.jpg", "rgba.png")


@pytest.fixture(autouse=True)
def restore_pil_limit(monkeypatch):
    """Setup sets PIL's global decompression-bomb limit; put it back after each test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


datamodule = make_datamodule


def jpeg_bytes(size: int = 64, progressive: bool = False, grey_below: int | None = None) -> bytes:
    """A noise JPEG; ``grey_below``: rows from there down are mid-grey, as a block of zeros decodes."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    if grey_below is not None:
        pixels[grey_below:] = 128
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, progressive=progressive)
    return buffer.getvalue()


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Two classes of 3 good images, plus in train/red every kind of file the issue names."""
    root = make_image_folder(tmp_path / "mixed", per_class=3, size=32, classes=("blue", "red"))
    red = root / "train" / "red"
    data = jpeg_bytes()
    (red / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (red / "text.jpg").write_text("not a picture, just text\n")
    (red / "empty.png").write_bytes(b"")
    Image.new("L", (32, 32), 120).save(red / "gray.png")
    Image.new("CMYK", (32, 32), (0, 200, 200, 0)).save(red / "cmyk.jpg")
    Image.new("RGBA", (32, 32), (200, 0, 0, 128)).save(red / "rgba.png")
    Image.new("P", (32, 32), 3).save(red / "anim.gif")
    (red / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    os.symlink("loop.jpg", red / "loop.jpg")  # a link to itself
    os.symlink(red / "missing.jpg", red / "dangling.jpg")
    return root


def test_bad_files_stop_with_one_message_counting_each_kind(mixed_folder):
    with pytest.raises(ConfigError) as error:
        datamodule(mixed_folder).setup("fit")
    message = str(error.value)
    assert f"{len(BAD)} bad image file(s)" in message and str(mixed_folder) in message
    for kind in BAD.values():
        assert f"1 {kind}" in message
    for name, kind in BAD.items():
        assert f"{mixed_folder / 'train' / 'red' / name}: {kind}" in message
    assert not any(name in message for name in (*ACCEPTED, "anim.gif", ".DS_Store"))
    assert "data.on_bad_image=skip" in message
    red = mixed_folder / "train" / "red"
    assert f"dangling.jpg: broken link: points to {red / 'missing.jpg'}, which does not exist" in message
    assert "loop.jpg: link loop: the link -> loop.jpg leads back to itself; point it at an image" in message


def test_skip_leaves_out_only_the_bad_files_and_odd_modes_load_as_rgb(mixed_folder, tmp_path, caplog):
    data = datamodule(mixed_folder, on_bad_image="skip", run_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    used = {Path(path).name for path, _ in data.train_set.samples}
    assert used == {"000.png", "001.png", "002.png", *ACCEPTED}
    assert len(data.train_set) == 3 + 6 and data.class_counts == [3, 6]
    assert {tuple(image.shape) for image, _ in data.train_set} == {(3, 32, 32)}
    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert sorted((Path(p).name, reason.split(":")[0]) for p, reason in (line.split("\t") for line in lines)) == \
        sorted(BAD.items())
    assert [(Path(f.path).name, f.kind) for f in data.scan_report.warnings] == [("anim.gif", "not used")]
    assert "anim.gif" in caplog.text and f"Skipping {len(BAD)} bad image file(s)" in caplog.text


def test_a_run_on_the_mixed_folder_with_skip_trains(mixed_folder, make_config, tmp_path):
    results = train(make_config("data.on_bad_image=skip", "trainer.max_epochs=1", data_root=mixed_folder))
    assert results["epochs_run"] == 1 and results["classes"] == ["blue", "red"]
    skipped = (tmp_path / "run" / "skipped.txt").read_text()
    assert sorted(Path(line.split("\t")[0]).name for line in skipped.splitlines()) == sorted(BAD)


def test_decompression_bomb_limit_is_configurable(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    Image.new("RGB", (100, 100), (200, 0, 0)).save(root / "train" / "red" / "big.png")
    with pytest.raises(ConfigError) as error:
        datamodule(root, max_image_pixels=5000).setup("fit")
    assert "1 too large" in str(error.value) and "big.png: too large: 10,000 pixels > data.max_image_pixels=5000\n" \
        in str(error.value)
    assert "decompression-bomb" not in str(error.value)  # the configured limit is named, not PIL's
    allowed = datamodule(root, max_image_pixels=10_000)
    allowed.setup("fit")
    assert len(allowed.train_set) == 5 and Image.MAX_IMAGE_PIXELS == 10_000  # loading agrees with the scan


def test_pils_limit_is_named_as_such_when_data_max_image_pixels_is_not_set(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    png_header(root / "train" / "red" / "huge.png", 10_000, 9_000)
    with pytest.raises(ConfigError) as error:
        datamodule(root).setup("fit")
    assert ("huge.png: too large: 90,000,000 pixels > PIL's decompression-bomb limit of 89,478,485 pixels "
            "(raise it with data.max_image_pixels=...)") in str(error.value)


def test_a_jpeg_cut_short_with_an_end_marker_appended_is_truncated(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    red = root / "train" / "red"
    for name, progressive in (("cut.jpg", False), ("cut_progressive.jpg", True)):
        data = jpeg_bytes(96, progressive)
        (red / name).write_bytes(data[: len(data) // 2] + b"\xff\xd9")
        with Image.open(red / name) as image:
            image.load()  # PIL decodes it without a complaint: the missing half comes out grey
    (red / "grey_bottom.jpg").write_bytes(jpeg_bytes(96, grey_below=48))  # complete; its last block is grey too
    with pytest.raises(ConfigError) as error:
        datamodule(root).setup("fit")
    message = str(error.value)
    assert "2 bad image file(s)" in message and "grey_bottom.jpg" not in message
    for name in ("cut.jpg", "cut_progressive.jpg"):
        assert (f"{red / name}: truncated: the JPEG data stops before the image does (an end marker follows a cut); "
                "the rest would decode as grey or blurred") in message


def test_images_beside_the_class_folders_are_a_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    shutil.copy(root / "train" / "red" / "000.png", root / "train" / "stray.png")
    shutil.copy(root / "val" / "red" / "000.png", root / "val" / "loose.png")
    data = datamodule(root)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert [(f.path, f.kind) for f in data.scan_report.warnings] == [
        (str(root / "train" / "stray.png"), "not in a class folder"), (str(root / "val" / "loose.png"),
                                                                      "not in a class folder")]
    assert "ImageFolder reads only train/<class>/<image>" in data.scan_report.warnings[0].reason
    assert "2 file(s) not in a class folder (not used: move each into the folder of its class" in caplog.text
    assert len(data.train_set) == 4 and len(data.val_set) == 4


def test_a_byte_identical_image_in_train_and_val_is_a_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    shutil.copy(root / "train" / "red" / "001.png", root / "val" / "blue" / "copy.png")
    data = datamodule(root)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert [(f.path, f.kind) for f in data.scan_report.warnings] == [
        (str(root / "train" / "red" / "001.png"), "in train and val")]
    assert "copy.png" in data.scan_report.warnings[0].reason and "1 file(s) in train and val" in caplog.text
    assert len(data.val_set) == 5  # a warning, not a problem


def test_a_rerun_reuses_the_cache_and_opens_no_image(mixed_folder, monkeypatch):
    shutil.copy(mixed_folder / "train" / "red" / "000.png", mixed_folder / "val" / "blue" / "copy.png")
    cache = mixed_folder.parent / "run" / "scan.json"
    train_dir, val_dir = mixed_folder / "train", mixed_folder / "val"
    first = scan.scan_dataset(train_dir, val_dir, cache)
    assert cache.is_file() and {f.kind for f in first.warnings} == {"not used", "in train and val"}

    opened, hashed = [], []
    real_open, real_digest = Image.open, scan.file_digest
    monkeypatch.setattr(scan.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    monkeypatch.setattr(scan, "file_digest", lambda path: hashed.append(path) or real_digest(path))
    assert scan.scan_dataset(train_dir, val_dir, cache) == first
    assert opened == [] and hashed == []

    changed = train_dir / "blue" / "000.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(changed)
    os.utime(changed, ns=(1, 1))
    assert scan.scan_dataset(train_dir, val_dir, cache) == first
    assert {Path(p) for p in opened} == {changed}


def test_imbalance_is_reported_and_balanced_weights_are_inverse_frequency(tmp_path, caplog, make_config):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    make_image_folder(root, per_class=11, size=32, splits=("train",), classes=("red",))
    data = datamodule(root)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert data.class_counts == [2, 11]
    assert "imbalanced beyond 1:5" in caplog.text and "blue 2, red 11" in caplog.text
    assert "loss.class_weights=balanced" in caplog.text

    assert class_weights("balanced", [2, 8]) == [2.5, 0.625]
    assert class_weights(None, [2, 8]) is None
    with pytest.raises(ConfigError):
        class_weights("inverse", [2, 8])
    data = SimpleNamespace(class_names=["a", "b"], class_counts=[2, 8], preprocessing=RESNET18)
    model = build_model(make_config("loss.class_weights=balanced"), data)
    assert model.criterion.weight.tolist() == [2.5, 0.625] and model.hparams.class_weights == [2.5, 0.625]
    assert "criterion.weight" in model.state_dict()  # a buffer: moves with the model, saved in checkpoints
    assert build_model(make_config(), data).criterion.weight is None


def test_balanced_classes_give_no_imbalance_warning(image_folder, caplog):
    with caplog.at_level(logging.WARNING):
        datamodule(image_folder).setup("fit")
    assert "imbalanced" not in caplog.text


def test_a_split_smaller_than_one_batch_still_trains(tmp_path, make_config):
    root = make_image_folder(tmp_path / "tiny", per_class=2, size=32, classes=("blue", "red"))
    results = train(make_config("data.batch_size=32", "trainer.max_epochs=1", data_root=root))
    assert len(results["history"]) == 1 and results["train_images_per_s"] > 0
    assert "train_loss" in results["history"][0]


def test_on_bad_image_must_be_error_or_skip(image_folder):
    with pytest.raises(ConfigError, match="data.on_bad_image='ignore'"):
        datamodule(image_folder, on_bad_image="ignore")


def test_hidden_files_and_folders_are_neither_scanned_nor_warned_about_nor_used(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=2, size=32, classes=("blue", "red"))
    (root / "train" / "red" / "._000.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # macOS AppleDouble: no image
    for hidden in (root / "train" / "red" / ".ipynb_checkpoints", root / "val" / ".ipynb_checkpoints"):
        hidden.mkdir()
        shutil.copy(root / "train" / "red" / "000.png", hidden / "000-checkpoint.png")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(scan.Image, "open", lambda *a, **k: opened.append(Path(a[0])) or real_open(*a, **k))
    data = datamodule(root)  # on_bad_image=error: the ._ file used to stop setup as "not an image"
    data.setup("fit")
    assert data.class_names == ["blue", "red"] and len(data.train_set) == 4 and len(data.val_set) == 4
    assert data.scan_report.problems == [] and data.scan_report.warnings == []
    assert opened and not any(part.startswith(".") for path in opened for part in path.relative_to(root).parts)
