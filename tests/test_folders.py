"""The folder rules: classes, images, hidden entries, nesting, links; and every walk agreeing on them."""

import logging
import os
from pathlib import Path

import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from transferlab.cli.predict import list_images
from transferlab.data import scan
from transferlab.data.folders import (
    MAX_DEFAULT_WORKERS,
    ClassFolder,
    class_files,
    class_folders,
    class_names,
    default_num_workers,
    has_images,
    image_files,
    is_image,
    loader_workers,
    visible_files,
)
from transferlab.data.images import PixelLimit
from transferlab.errors import ConfigError

APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # what macOS writes into ._name.jpg


def image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")
    return path


def relative(paths: list[Path], root: Path) -> list[str]:
    return [Path(path).relative_to(root).as_posix() for path in paths]


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """``val/`` as a Jupyter and macOS user leaves it: checkpoints, AppleDouble files, .DS_Store, nesting."""
    root = tmp_path / "val"
    for name in ("ants/001.png", "ants/nested/deeper/002.png", "ants/nested-b/003.png", "bees/001.png",
                 "bees/CAPS.PNG", ".ipynb_checkpoints/001-checkpoint.png", "ants/.ipynb_checkpoints/004.png",
                 "bees/.thumbnails/005.png"):
        image(root / name)
    (root / "ants" / "._001.png").write_bytes(APPLEDOUBLE)
    (root / "bees" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "bees" / "notes.txt").write_text("not an image\n")
    image(root / "README.png")  # a file beside the classes, not in one: no class, no sample
    return root


def test_classes_are_the_non_hidden_sub_folders_sorted(split):
    (split / "Zebras").mkdir()
    assert class_names(split) == ["Zebras", "ants", "bees"]  # sorted as ImageFolder sorts: by code point
    with pytest.raises(ConfigError, match="no images in .*: Zebras"):
        class_folders(split)
    (split / "Zebras").rmdir()
    assert class_folders(split) == ["ants", "bees"]


def test_hidden_files_and_folders_inside_a_class_are_skipped(split):
    files = class_files(split)
    assert list(files) == ["ants", "bees"]
    assert relative(files["ants"], split) == ["ants/001.png", "ants/nested-b/003.png", "ants/nested/deeper/002.png"]
    assert relative(files["bees"], split) == ["bees/001.png", "bees/CAPS.PNG", "bees/notes.txt"]
    assert relative(image_files(split / "bees"), split) == ["bees/001.png", "bees/CAPS.PNG"]


def test_the_order_is_imagefolders_on_a_tree_without_hidden_entries(tmp_path):
    root = tmp_path / "plain"
    for name in ("a/z.png", "a/b/y.png", "a/b-c/x.png", "a/b/c/w.png", "b/v.jpg", "b/V.JPEG"):
        image(root / name)
    expected = ImageFolder(str(root)).samples  # torchvision sorts by folder path, then by name
    assert ClassFolder(str(root)).samples == expected
    assert [str(path) for path in image_files(root)] == [path for path, _ in expected]


@pytest.mark.parametrize("name, expected", [
    ("x.jpg", True), ("x.JPEG", True), ("x.Png", True), ("x.webp", True), ("x.tiff", True), ("dir/x.bmp", True),
    ("x.gif", False), ("x.txt", False), ("x.jpg.txt", False), ("jpg", False), ("._x.jpg", False), (".x.png", False),
])
def test_an_image_is_a_non_hidden_file_with_an_image_extension(name, expected):
    assert is_image(name) is expected and is_image(Path(name)) is expected


def test_links_are_followed_and_a_link_cycle_lists_each_file_once(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    image(elsewhere / "linked" / "010.png")
    image(elsewhere / "single.png")
    image(elsewhere / "whole_class" / "020.png")
    split = tmp_path / "train"
    image(split / "ants" / "001.png")
    os.symlink(elsewhere / "linked", split / "ants" / "from_link")
    os.symlink(elsewhere / "single.png", split / "ants" / "single.png")
    os.symlink(split / "ants", split / "ants" / "loop")  # a cycle: ants/loop/loop/... is ants again
    os.symlink(elsewhere / "whole_class", split / "bees")  # a class folder that is a link
    assert class_folders(split) == ["ants", "bees"]
    assert relative(image_files(split / "ants"), split) == ["ants/001.png", "ants/single.png", "ants/from_link/010.png"]
    assert [(Path(p).relative_to(split).as_posix(), label) for p, label in ClassFolder(str(split)).samples] == [
        ("ants/001.png", 0), ("ants/single.png", 0), ("ants/from_link/010.png", 0), ("bees/020.png", 1)]


def test_a_folder_link_back_up_is_not_followed_and_is_named_once(tmp_path, caplog):
    split = tmp_path / "train"
    image(split / "ants" / "001.png")
    image(split / "bees" / "002.png")
    image(split / "beside.png")
    nested = image(split / "ants" / "nested" / "003.png").parent
    os.symlink("..", split / "ants" / "loopdir")  # would reach train/bees/ and label its images ants
    os.symlink(".", nested / "self")  # would list 003.png again, to the OS's limit of links in a path
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            dataset = ClassFolder(str(split))
            report, usable = scan.scan_split(split, scan.ScanCache(None, tmp_path), PixelLimit())
    assert [(Path(p).relative_to(split).as_posix(), label) for p, label in dataset.samples] == [
        ("ants/001.png", 0), ("ants/nested/003.png", 0), ("bees/002.png", 1)]
    assert [str(path) for path, _ in usable] == [path for path, _ in dataset.samples]  # the scan agrees
    for link, target in ((split / "ants" / "loopdir", split), (nested / "self", nested)):
        assert caplog.text.count(f"Not following the folder link {link} -> ") == 1
        assert f"it leads back to {target}, which holds it" in caplog.text
    assert "Remove the link." in caplog.text


def test_class_folders_errors_name_the_split_and_the_fix(tmp_path):
    split = tmp_path / "train"
    (split / ".ipynb_checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no class folders") as error:
        class_folders(split)
    assert f"{split}/<class name>/<image>" in str(error.value)
    image(split / "ants" / "001.png")
    (split / "bees").mkdir()
    (split / "bees" / "._001.png").write_bytes(APPLEDOUBLE)  # only hidden images: still an empty class
    image(split / "bees" / ".cache" / "002.png")
    assert not has_images(split / "bees") and has_images(split / "ants")
    with pytest.raises(ConfigError) as error:
        class_folders(split)
    assert f"Class folder(s) with no images in {split}: bees." in str(error.value)
    assert ".jpg" in str(error.value) and "remove the folder" in str(error.value)


def test_classfolder_applies_is_valid_file_below_the_hidden_rule(split):
    inside = lambda path: os.path.relpath(path, split)
    dataset = ClassFolder(str(split), is_valid_file=lambda path: is_image(path) and "nested" not in inside(path))
    assert dataset.classes == ["ants", "bees"] and dataset.class_to_idx == {"ants": 0, "bees": 1}
    assert relative([path for path, _ in dataset.samples], split) == ["ants/001.png", "bees/001.png", "bees/CAPS.PNG"]
    everything = ClassFolder(str(split), is_valid_file=lambda path: True)  # still no hidden file
    assert relative([path for path, _ in everything.samples], split) == [
        "ants/001.png", "ants/nested-b/003.png", "ants/nested/deeper/002.png", "bees/001.png", "bees/CAPS.PNG",
        "bees/notes.txt"]
    with pytest.raises(FileNotFoundError, match="no valid file for the classes ants"):
        ClassFolder(str(split), is_valid_file=lambda path: inside(path).startswith("bees"))


def test_every_walk_sees_the_same_classes_and_images(split, monkeypatch):
    dataset = ClassFolder(str(split))
    samples = relative([path for path, _ in dataset.samples], split)
    assert dataset.classes == class_folders(split) == ["ants", "bees"]
    assert samples == relative(image_files(split / "ants") + image_files(split / "bees"), split)
    assert relative(list_images(split), split) == ["README.png", *samples]  # predict takes any image under input
    opened = []
    real_open = Image.open
    monkeypatch.setattr(scan.Image, "open", lambda *a, **k: opened.append(Path(a[0])) or real_open(*a, **k))
    report, usable = scan.scan_split(split, scan.ScanCache(None, split.parent), PixelLimit())
    assert relative([path for path, _ in usable], split) == samples and not report.problems
    assert [(Path(f.path).name, f.kind) for f in report.warnings] == [("notes.txt", "not used"),
                                                                      ("README.png", "not in a class folder")]
    assert len(opened) >= len(samples)
    assert not any(path.name.startswith(".") or ".ipynb_checkpoints" in path.parts for path in opened)


def test_visible_files_of_a_missing_folder_is_empty(tmp_path):
    assert visible_files(tmp_path / "missing") == [] and not has_images(tmp_path / "missing")


@pytest.mark.parametrize("cores, expected", [(1, 1), (3, 3), (8, 8), (64, 8)])
def test_num_workers_default_is_the_available_cores_capped(monkeypatch, cores, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)  # where the OS has no affinity
    assert MAX_DEFAULT_WORKERS == 8
    assert default_num_workers() == expected and loader_workers(None) == expected  # data.num_workers=null


def test_more_loader_processes_than_cores_are_capped_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING):
        assert loader_workers(None) == 2 and loader_workers(0) == 0 and loader_workers(2) == 2
        assert caplog.text == ""
        assert loader_workers(64) == 2 and loader_workers(3, "num_workers") == 2
    assert ("data.num_workers=64 asks for more loader processes than the 2 CPU core(s) this process may use: "
            "using 2.") in caplog.text and "set data.num_workers to at most 2" in caplog.text
    assert "num_workers=3 asks" in caplog.text and len(caplog.records) == 2
