"""The folder rules, in one place: which sub-folders are classes, which files are images, what is hidden.

The data module, the scan, evaluation and prediction all walk image folders through this module,
so they see the same classes and the same images:

- a class is a sub-folder of a split (``train/``, ``val/``, ``test/``) whose name does not start
  with ``.``: Jupyter's ``.ipynb_checkpoints/`` is never a class. Classes are sorted by name;
- under a class folder (or a folder given to predict), hidden files and hidden folders are
  skipped: macOS's ``._name.jpg`` (AppleDouble metadata) has an image extension but is no image;
- an image is a file with one of torchvision's ``IMG_EXTENSIONS`` (any case);
- links are followed, as ImageFolder follows them, except a link to a folder that holds it (``self -> .``,
  ``loop -> ..``): ImageFolder would follow it round to the OS's limit, or into another class; it is
  skipped with a warning. A folder reached a second time (two links to one folder) is listed once;
- an image directly in a split, beside the class folders, is in no class (the scan warns about it);
- files come in ImageFolder's order: by folder path, then by name.
"""

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from transferlab.errors import ConfigError

__all__ = ["IMG_EXTENSIONS", "MAX_DEFAULT_WORKERS", "ClassFolder", "available_cores", "class_files", "class_folders",
           "class_names", "default_num_workers", "has_images", "image_files", "is_hidden", "is_image",
           "loader_workers", "stray_images", "visible_files"]

log = logging.getLogger(__name__)

# Past 8 loader processes, more mostly compete for the same cores (and each holds its own copy of
# the data set and its prefetched batches) instead of loading faster.
MAX_DEFAULT_WORKERS = 8


def available_cores() -> int:
    """The CPU cores this process may use (its affinity, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers() -> int:
    """Loader processes: the CPU cores this process may use, capped at ``MAX_DEFAULT_WORKERS``."""
    return min(available_cores(), MAX_DEFAULT_WORKERS)


def loader_workers(asked: int | None, setting: str = "data.num_workers") -> int:
    """``asked`` loader processes, at most one per available core (with a warning); None: the default."""
    if asked is None:
        return default_num_workers()
    cores = available_cores()
    if asked <= cores:
        return asked
    log.warning("%s=%d asks for more loader processes than the %d CPU core(s) this process may use: using %d. "
                "More would only compete for the same cores (each holding its own copy of the data set and its "
                "prefetched batches) and load slower; set %s to at most %d, or null for the default.",
                setting, asked, cores, cores, setting, cores)
    return cores


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


def stray_images(split: str | os.PathLike) -> list[Path]:
    """Images directly in a split, beside its class folders: in no class, so no data set reads them."""
    with os.scandir(split) as entries:
        return sorted(Path(entry.path) for entry in entries if is_image(entry.name) and not entry.is_dir())


_LOOPS_WARNED: set[str] = set()  # each folder link loop is logged once per process, not once per walk


def _link_loop(path: str) -> bool:
    """Whether ``path`` is a link to the folder holding it or to one of that folder's ancestors; warns once."""
    if not os.path.islink(path):
        return False
    target, holder = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([target, holder]) != target:
        return False
    if path not in _LOOPS_WARNED:
        _LOOPS_WARNED.add(path)
        log.warning("Not following the folder link %s -> %s: it leads back to %s, which holds it, so its images "
                    "would be read again (or those of other classes, under this class). Remove the link.",
                    path, os.readlink(path), target)
    return True


def _walk(folder: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """``(folder path, names of its non-hidden files)`` for ``folder`` and every non-hidden folder below it.

    Each real folder (device and inode) is visited once, and links back up (``_link_loop``) not at all.
    """
    if _link_loop(os.fspath(folder)):
        return
    seen: set[tuple[int, int]] = set()
    for parent, subfolders, names in os.walk(folder, followlinks=True):
        stat = os.stat(parent)
        if (stat.st_dev, stat.st_ino) in seen:  # reached again through another link: listed once
            subfolders.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subfolders[:] = sorted(name for name in subfolders  # sorted: which copy wins is fixed
                               if not is_hidden(name) and not _link_loop(os.path.join(parent, name)))
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
