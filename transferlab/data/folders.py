"""The folder rules, in one place: which sub-folders are classes, which files are images, what is hidden.

The data module, the scan, evaluation and prediction all walk image folders through this module,
so they see the same classes and the same images:

- a class is a sub-folder of a split (``train/``, ``val/``, ``test/``) whose name does not start
  with ``.``: Jupyter's ``.ipynb_checkpoints/`` is never a class. Classes are sorted by name;
- under a class folder (or a folder given to predict), hidden files and hidden folders are
  skipped: macOS's ``._name.jpg`` (AppleDouble metadata) has an image extension but is no image;
- an image is a file with one of torchvision's ``IMG_EXTENSIONS`` (any case);
- links are followed, as ImageFolder follows them; a folder reached a second time (a link cycle,
  or two links to one folder) is listed once;
- files come in ImageFolder's order: by folder path, then by name.
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from transferlab.errors import ConfigError

__all__ = ["IMG_EXTENSIONS", "MAX_DEFAULT_WORKERS", "ClassFolder", "class_files", "class_folders", "class_names",
           "default_num_workers", "has_images", "image_files", "is_hidden", "is_image", "visible_files"]

# Past 8 loader processes, more mostly compete for the same cores (and each holds its own copy of
# the data set and its prefetched batches) instead of loading faster.
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """Loader processes: the CPU cores this process may use, capped at ``MAX_DEFAULT_WORKERS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_DEFAULT_WORKERS)


def is_hidden(name: str) -> bool:
    """A file or folder name that every walk skips (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``)."""
    return name.startswith(".")


def is_image(path: str | os.PathLike) -> bool:
    """Whether a file is an image by its name: not hidden, with one of ``IMG_EXTENSIONS``."""
    name = os.path.basename(path)
    return not is_hidden(name) and has_file_allowed_extension(name, IMG_EXTENSIONS)


def class_names(split: str | os.PathLike) -> list[str]:
    """The classes of a split: its non-hidden sub-folders (links to folders too), sorted; no checks."""
    with os.scandir(split) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not is_hidden(entry.name))


def _walk(folder: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """``(folder path, names of its non-hidden files)`` for ``folder`` and every non-hidden folder below it."""
    seen: set[str] = set()
    for parent, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # reached again through a link: a cycle would otherwise repeat to the OS's link limit
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if not is_hidden(name))  # sorted: which copy wins is fixed
        yield parent, [name for name in names if not is_hidden(name)]


def visible_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` that is neither hidden nor in a hidden folder, in ImageFolder's order.

    The one walk: the scan, ``ClassFolder`` and predict's listing all read folders through it.
    """
    return [Path(parent, name) for parent, names in sorted(_walk(folder)) for name in sorted(names)]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images under ``folder`` (recursively), in ImageFolder's order."""
    return [path for path in visible_files(folder) if is_image(path)]


def has_images(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds at least one image; stops at the first."""
    return any(is_image(name) for _, names in _walk(folder) for name in names)


def class_files(split: str | os.PathLike) -> dict[str, list[Path]]:
    """Each class of a split and its visible files, images and others (the scan warns about the others)."""
    return {name: visible_files(Path(split, name)) for name in class_names(split)}


def class_folders(split: Path) -> list[str]:
    """Class names of an ImageFolder split, failing clearly on no classes or empty classes."""
    classes = class_names(split)
    if not classes:
        raise ConfigError(
            f"{split} has no class folders. Put each class's images in their own sub-folder: "
            f"{split}/<class name>/<image>."
        )
    empty = [name for name in classes if not has_images(split / name)]
    if empty:
        raise ConfigError(
            f"Class folder(s) with no images in {split}: {', '.join(empty)}. Add images "
            f"({', '.join(IMG_EXTENSIONS)}) or remove the folder(s)."
        )
    return classes


def require_classes(folder: Path, expected: list[str], expected_from: str, fix: str) -> None:
    """Fail unless ``folder``'s class folders are exactly ``expected`` (named after ``expected_from``)."""
    found = class_folders(folder)
    if found != list(expected):
        raise ConfigError(
            f"The classes of {folder} differ from those of {expected_from}: only in {expected_from}: "
            f"{sorted(set(expected) - set(found)) or 'none'}; only in {folder.name}: "
            f"{sorted(set(found) - set(expected)) or 'none'}. {fix}"
        )


class ClassFolder(ImageFolder):
    """An ImageFolder that follows this module's rules: hidden folders are no classes, hidden files no samples.

    Example: ``ClassFolder("data/val", transform=preprocess).classes`` is ``["ants", "bees"]`` for a
    ``val/`` holding ``ants/``, ``bees/`` and Jupyter's ``.ipynb_checkpoints/``.
    """

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = class_names(directory)
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        keep = is_valid_file or (lambda path: has_file_allowed_extension(path, extensions or IMG_EXTENSIONS))
        samples = [(str(path), index) for name, index in sorted(class_to_idx.items())
                   for path in visible_files(Path(directory, name)) if keep(str(path))]
        found = {index for _, index in samples}
        empty = sorted(name for name, index in class_to_idx.items() if index not in found)
        if empty and not allow_empty:  # ImageFolder's own error, which callers catch and explain
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}.")
        return samples
