"""A scan of an image folder before training: bad files, skipped extensions, train/val leakage.

Fast: images are checked from their headers (``PIL.Image.open`` + ``verify()``, which checks PNG chunk
checksums); JPEG and PNG files are also checked for their end marker (``FFD9`` / ``IEND``), and only a
file that lacks it, or a file in another format, is decoded in full. A JPEG with its end marker is decoded
at 1/8 scale to catch data cut short before it (``transferlab.data.jpeg``). Results are cached by file
size and modification time, so a rerun in the same run folder opens no image.
"""

import errno
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from transferlab.data.folders import IMG_EXTENSIONS, class_files, is_image, stray_images
from transferlab.data.images import PixelLimit, no_pixel_limit
from transferlab.data.jpeg import cut_short
from transferlab.files import atomic_path, write_text_atomically
from transferlab.ranks import is_global_zero

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bumped when FileCheck or the checks change: a scan.json of another version is not reused
SHOWN = 5  # paths listed per message

# Kinds of problem (files that stop the run or are skipped) and of warning; a reason starts with its kind.
EMPTY, NOT_IMAGE, TRUNCATED, UNDECODABLE, UNREADABLE, BROKEN_LINK, LINK_LOOP = (
    "empty file", "not an image", "truncated", "cannot be decoded", "unreadable", "broken link", "link loop")
NOT_USED, LEAKAGE, NO_CLASS = "not used", "in train and val", "not in a class folder"
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


class Finding(NamedTuple):
    """One file and what is wrong with it; ``reason`` starts with the kind (``"truncated: ..."``)."""

    path: str
    reason: str

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class ScanReport:
    """``problems`` stop the run (or are skipped with ``data.on_bad_image=skip``); ``warnings`` are logged."""

    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def bad_paths(self) -> set[str]:
        return {finding.path for finding in self.problems}

    def error_message(self, root: Path) -> str:
        """One message: how many files of each kind, the first few paths, and the two ways out."""
        return (f"{len(self.problems)} bad image file(s) in {root}: {count_kinds(self.problems)}."
                f"{listing(self.problems)}\nRemove or repair them, or set data.on_bad_image=skip to train "
                "without them (their paths and reasons go to skipped.txt in the run folder).")


@dataclass
class FileCheck:
    """What one file's scan found; cached by (size, mtime_ns)."""

    size: int
    mtime_ns: int
    pixels: int | None = None
    error: str | None = None
    decoded: bool = True  # False: too large to decode at the limit it was scanned with
    digest: str | None = None


def count_kinds(findings: Iterable[Finding]) -> str:
    """``"2 truncated, 1 not an image"``: the count of each kind, most frequent first."""
    return ", ".join(f"{count} {kind}" for kind, count in Counter(f.kind for f in findings).most_common())


def listing(findings: list[Finding], shown: int = SHOWN) -> str:
    """The first ``shown`` findings as indented lines, and how many more there are."""
    lines = [f"  {f.path}: {f.reason}" for f in findings[:shown]]
    if len(findings) > shown:
        lines.append(f"  ... and {len(findings) - shown} more")
    return "\n" + "\n".join(lines)


def ends_with(path: Path, marker: bytes) -> bool:
    """Whether the file's last bytes are ``marker`` (reads only those bytes)."""
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() < len(marker):
            return False
        file.seek(-len(marker), os.SEEK_END)
        return file.read() == marker


def decode_error(path: Path) -> str | None:
    """The reason a full decode fails, or None."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL raises many types for bad data
        return describe(error)
    return None


def describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    kind = TRUNCATED if "truncated" in text.lower() or isinstance(error, EOFError) else UNDECODABLE
    return f"{kind}: {text}"


def link_problem(path: Path, error: OSError) -> str | None:
    """The reason a link cannot be read (it points nowhere, or round in a loop), else None."""
    if not path.is_symlink() or error.errno not in (errno.ENOENT, errno.ELOOP):
        return None
    if error.errno == errno.ELOOP:
        return f"{LINK_LOOP}: the link -> {os.readlink(path)} leads back to itself; point it at an image or delete it"
    target = os.path.normpath(path.parent / os.readlink(path))
    return f"{BROKEN_LINK}: points to {target}, which does not exist; point it at an image or delete it"


def check_image(path: Path, max_pixels: int) -> FileCheck:
    """Check one file: a broken link, empty, not an image, truncated, undecodable; record its pixel count.

    Images over ``max_pixels`` are not decoded (``decoded=False``); ``too_large`` judges them.
    """
    check = FileCheck(-1, -1)  # no size or time to cache by: a link that cannot be followed is checked each scan
    try:
        stat = path.stat()
        check.size, check.mtime_ns = stat.st_size, stat.st_mtime_ns
        if stat.st_size == 0:
            check.error = f"{EMPTY}: 0 bytes"
            return check
        with Image.open(path) as image:
            image_format, (width, height) = image.format, image.size
            check.pixels = width * height
            if check.pixels > max_pixels:
                check.decoded = False
                return check
            image.verify()
        marker = END_MARKERS.get(image_format)
        if marker is None or not ends_with(path, marker):  # no cheap proof of completeness: decode it
            check.error = decode_error(path)
        elif image_format == "JPEG" and cut_short(path.read_bytes()):
            check.error = (f"{TRUNCATED}: the JPEG data stops before the image does (an end marker follows a cut); "
                           "the rest would decode as grey or blurred")
    except UnidentifiedImageError:
        check.error = f"{NOT_IMAGE}: PIL cannot identify it as an image"
    except PermissionError as error:
        check.error = f"{UNREADABLE}: {error.strerror}"
    except OSError as error:
        check.error = link_problem(path, error) or describe(error)
    except Exception as error:
        check.error = describe(error)
    return check


def too_large(check: FileCheck, limit: PixelLimit) -> str | None:
    """``"too large: ..."`` (``images.TOO_LARGE``) for an image over ``limit``, naming it, else None."""
    return limit.reason(check.pixels) if check.pixels is not None else None


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ScanCache:
    """Per-file checks keyed by path relative to the data root, valid while size and mtime_ns match."""

    def __init__(self, path: Path | None, root: Path) -> None:
        self.path, self.root = path, str(root.resolve())
        self.entries: dict[str, FileCheck] = {}
        self.reused = 0
        if path is not None and path.is_file():
            try:
                content = json.loads(path.read_text())
                if content.get("version") == CACHE_VERSION and content.get("root") == self.root:
                    self.entries = {key: FileCheck(**value) for key, value in content["files"].items()}
            except (ValueError, TypeError, KeyError):
                log.warning("Ignoring an unreadable scan cache %s", path)

    def key(self, path: Path) -> str:
        return Path(os.path.relpath(os.path.realpath(path), self.root)).as_posix()  # realpath: no error on a loop

    def get(self, path: Path, max_pixels: int) -> FileCheck | None:
        entry = self.entries.get(self.key(path))
        if entry is None:
            return None
        try:
            stat = path.stat()
        except OSError:  # a link that cannot be followed (any more): check_image says why
            return None
        if (entry.size, entry.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            return None
        if not entry.decoded and (entry.pixels or 0) <= max_pixels:
            return None  # too large when scanned, not now: it has never been checked
        self.reused += 1
        return entry

    def put(self, path: Path, check: FileCheck) -> None:
        self.entries[self.key(path)] = check

    def save(self) -> None:
        """Write the cache file; only on rank zero of a DDP run (the others read it, and scan what it lacks)."""
        if self.path is None or not is_global_zero():
            return
        files = {key: vars(check) for key, check in self.entries.items()}
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps({"version": CACHE_VERSION, "root": self.root, "files": files}))


def check_all(paths: list[Path], cache: ScanCache, max_pixels: int) -> list[FileCheck]:
    """Checks for ``paths``, from the cache where it is valid; the rest in a few threads (I/O bound)."""
    checks: list[FileCheck | None] = [cache.get(path, max_pixels) for path in paths]
    missing = [i for i, check in enumerate(checks) if check is None]
    if missing:
        log.info("Scanning %d image files (%d cached)", len(missing), len(paths) - len(missing))
        workers = min(8, len(missing), os.cpu_count() or 1)
        with no_pixel_limit(), ThreadPoolExecutor(max_workers=workers) as pool:
            for i, check in zip(missing, pool.map(lambda i: check_image(paths[i], max_pixels), missing), strict=True):
                checks[i] = check
                cache.put(paths[i], check)
    return checks  # type: ignore[return-value]


def find_problems(images: list[Path], limit: PixelLimit, cache: ScanCache | None = None,
                  ) -> tuple[list[Finding], list[tuple[Path, FileCheck]]]:
    """The bad files among ``images``, and the usable ones with their checks (``cache``: None reads no scan.json)."""
    checks = check_all(images, cache or ScanCache(None, Path.cwd()), limit.pixels)
    reasons = [(path, c, c.error or too_large(c, limit)) for path, c in zip(images, checks, strict=True)]
    return ([Finding(str(path), reason) for path, _, reason in reasons if reason],
            [(path, check) for path, check, reason in reasons if not reason])


def scan_split(folder: Path, cache: ScanCache, limit: PixelLimit) -> tuple[ScanReport, list[tuple[Path, FileCheck]]]:
    """Problems, skipped extensions and images beside the class folders of one split; the usable images.

    Hidden files (``.DS_Store``, macOS's ``._name.jpg``) are neither read nor warned about: no data set reads them.
    """
    files = [path for paths in class_files(folder).values() for path in paths]
    images, ignored = [p for p in files if is_image(p)], [p for p in files if not is_image(p)]
    problems, usable = find_problems(images, limit, cache)
    report = ScanReport(problems)
    extensions = " ".join(IMG_EXTENSIONS)
    report.warnings += [Finding(str(path), f"{NOT_USED}: ImageFolder reads only {extensions}") for path in ignored]
    report.warnings += [Finding(str(path), f"{NO_CLASS}: ImageFolder reads only {folder.name}/<class>/<image>")
                        for path in stray_images(folder)]
    return report, usable


def find_leakage(train: list[tuple[Path, FileCheck]], val: list[tuple[Path, FileCheck]],
                 cache: ScanCache) -> list[Finding]:
    """Train images byte-identical to a val image; only files whose size occurs in both splits are hashed."""
    val_sizes = {check.size for _, check in val}
    shared = {check.size for _, check in train} & val_sizes
    digest = lambda path, check: check.digest or _store_digest(path, check, cache)
    val_by_digest: dict[str, Path] = {}
    for path, check in val:
        if check.size in shared:
            val_by_digest.setdefault(digest(path, check), path)
    return [Finding(str(path), f"{LEAKAGE}: same bytes as {val_by_digest[digest(path, check)]}")
            for path, check in train if check.size in shared and digest(path, check) in val_by_digest]


def _store_digest(path: Path, check: FileCheck, cache: ScanCache) -> str:
    check.digest = file_digest(path)
    cache.put(path, check)
    return check.digest


def scan_dataset(train_dir: Path, val_dir: Path | None, cache_file: Path | None = None,
                 max_pixels: int | None = None) -> ScanReport:
    """Scan ``train_dir`` and ``val_dir`` (if any); ``cache_file`` (if given) is read and updated.

    ``max_pixels`` is ``data.max_image_pixels``: None means PIL's limit, and the messages say which.
    """
    limit = PixelLimit(max_pixels)
    root = train_dir.parent
    cache = ScanCache(cache_file, root)
    report, train_usable = scan_split(train_dir, cache, limit)
    if val_dir is not None:
        val_report, val_usable = scan_split(val_dir, cache, limit)
        report.problems += val_report.problems
        report.warnings += val_report.warnings + find_leakage(train_usable, val_usable, cache)
    cache.save()
    return report


def log_warnings(report: ScanReport) -> None:
    """One warning per kind: how many files, and the first few."""
    by_kind: dict[str, list[Finding]] = {}
    for finding in report.warnings:
        by_kind.setdefault(finding.kind, []).append(finding)
    advice = {NOT_USED: "rename or convert them to use them",
              LEAKAGE: "val accuracy overstates how well the model generalises; remove one copy",
              NO_CLASS: "not used: move each into the folder of its class to use it"}
    for kind, findings in by_kind.items():
        log.warning("%d file(s) %s (%s):%s", len(findings), kind, advice.get(kind, ""), listing(findings))


def write_skipped(path: Path, problems: list[Finding]) -> None:
    """``skipped.txt``: one ``path<TAB>reason`` line per skipped file (written on DDP's rank zero only)."""
    if not is_global_zero():
        return
    write_text_atomically(path, "".join(f"{f.path}\t{f.reason}\n" for f in problems))

