"""The image-folder data module: layouts, the carved-out val split, and errors on bad folders."""

import json
import logging
import os
import shutil

import pytest
import torch
from PIL import Image

from conftest import make_datamodule, make_image_folder
from transferlab.data.sampling import stratified_split
from transferlab.errors import ConfigError

datamodule = make_datamodule


def test_train_and_val_folders_give_batches(image_folder):
    data = datamodule(image_folder)
    data.setup("fit")
    assert data.class_names == ["blue", "green", "red"]
    assert len(data.train_set) == 36 and len(data.val_set) == 36
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert set(labels.tolist()) <= {0, 1, 2}


def test_missing_val_is_carved_out_stratified_and_recorded(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=10, splits=("train",))
    split_file = tmp_path / "run" / "split.json"
    data = datamodule(root, val_split=0.2, seed=3, run_dir=str(tmp_path / "run"))
    data.setup("fit")

    record = json.loads(split_file.read_text())
    assert len(record["val"]) == 6 and len(record["train"]) == 24  # 2 of each class's 10
    assert not set(record["val"]) & set(record["train"])
    assert sorted(p.split("/")[0] for p in record["val"]) == ["blue"] * 2 + ["green"] * 2 + ["red"] * 2
    assert len(data.val_set) == 6 and len(data.train_set) == 24

    again = datamodule(root, val_split=0.2, seed=3, run_dir=str(tmp_path / "again"))
    again.setup("fit")
    assert json.loads((tmp_path / "again" / "split.json").read_text()) == record  # seeded: the same split every time


def test_stratified_split_keeps_one_val_image_per_class():
    targets = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    train, val = stratified_split(targets, 0.1, seed=0)
    assert sorted(targets[i] for i in val) == [0, 1]  # round(0.2) would give class 0 none
    assert sorted(targets[i] for i in train) == [0] + [1] * 7
    assert sorted(train + val) == list(range(10))


def test_any_image_mode_is_converted_to_rgb(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, splits=("train", "val"))
    red = root / "train" / "red"
    Image.new("L", (40, 40), 120).save(red / "gray.png")
    Image.new("RGBA", (40, 40), (200, 0, 0, 128)).save(red / "alpha.png")
    Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(red / "cmyk.jpg")
    Image.new("P", (40, 40), 3).save(red / "palette.png")
    Image.new("I;16", (40, 40), 40000).save(red / "deep.png")
    data = datamodule(root)
    data.setup("fit")
    shapes = {tuple(image.shape) for image, _ in data.train_set}
    assert shapes == {(3, 32, 32)} and len(data.train_set) == 11


@pytest.mark.parametrize(
    "break_folder, expected",
    [
        (lambda root: shutil.rmtree(root), "does not exist"),
        (lambda root: shutil.rmtree(root / "train"), "has no train/ folder"),
        (lambda root: [p.unlink() for p in (root / "train" / "red").iterdir()], "no images in"),
        (lambda root: (root / "val" / "red").rename(root / "val" / "Red"), "only in val: ['Red']"),
        (lambda root: shutil.rmtree(root / "val" / "green"), "only in train: ['green']"),
        (lambda root: [shutil.rmtree(root / split / name) for split in ("train", "val") for name in ("green", "red")],
         "has one class folder (blue), and a classifier needs at least two classes to tell apart. Add another class "
         "folder beside it: "),
    ],
    ids=["missing-root", "missing-train", "empty-class", "renamed-val-class", "missing-val-class", "one-class"],
)
def test_bad_folders_get_a_clear_error(tmp_path, break_folder, expected):
    root = make_image_folder(tmp_path / "data", per_class=2)
    break_folder(root)
    with pytest.raises(ConfigError) as error:
        datamodule(root).setup("fit")
    assert expected in str(error.value)
    assert str(root) in str(error.value)


def test_num_workers_beyond_the_available_cores_is_capped(image_folder, monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING):
        data = datamodule(image_folder, num_workers=64)
    assert data.num_workers == 2 and len(caplog.records) == 1
    assert "data.num_workers=64 asks for more loader processes than the 2 CPU core(s)" in caplog.text
