"""Download a data-set archive once, verify its SHA-256 and extract it safely.

The public entry point is :func:`fetch_dataset`. A data set is considered
present when ``dest_dir/folder`` exists; otherwise the archive is downloaded
into a temporary file inside ``dest_dir``, hashed, checked member by member,
extracted into a temporary directory inside ``dest_dir`` and only then moved
to ``dest_dir/folder`` with a single rename. Temporary files and directories
are removed on success and on every error, so an interrupted or refused
download never leaves a half data set behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import zipfile
from pathlib import Path

import torch.hub

from transferlab.errors import ConfigError

__all__ = ["DownloadError", "fetch_dataset"]

log = logging.getLogger(__name__)

_CHUNK_SIZE = 1 << 20
_MAX_LINK_TARGET = 4096
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SEP_RE = re.compile(r"[\\/]+")


class DownloadError(ConfigError):
    """A data set could not be downloaded, verified or extracted."""


def fetch_dataset(
    url: str,
    dest_dir: str | Path,
    folder: str,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Return dest_dir/folder, downloading and extracting the archive at url first if missing.

    Raises DownloadError (with the url or path and the fix) when the archive cannot be
    downloaded, fails the SHA-256 check, holds unsafe members or lacks ``folder``.
    """
    dest = Path(dest_dir).expanduser()
    target = dest / _check_folder_name(folder)
    if target.is_dir():
        log.debug("Data set already present at %s; not downloading", target)
        return target
    if target.exists():
        raise DownloadError(
            f"{target} exists but is not a directory, so the data set from {url} cannot be "
            f"extracted there. Remove or rename {target}, or point data.root at an existing "
            "data-set folder."
        )
    _make_dest_dir(dest, url)
    archive = _new_temp_file(dest, folder)
    try:
        _download(url, archive, dest, folder, progress)
        _verify_sha256(url, archive, sha256)
        _extract_folder(url, archive, dest, folder)
    finally:
        archive.unlink(missing_ok=True)
    log.info("Data set ready at %s", target)
    return target


# --------------------------------------------------------------------------- setup


def _check_folder_name(folder: str) -> str:
    """Return folder if it is a single plain path component, else raise DownloadError."""
    parts = _split(folder)
    if len(parts) != 1 or parts[0] == ".." or _is_absolute(folder):
        raise DownloadError(
            f"Invalid data-set folder name {folder!r}: it must be a single directory name "
            "(no '/', '\\', '..' or absolute path), i.e. the top-level folder inside the archive."
        )
    return parts[0]


def _make_dest_dir(dest: Path, url: str) -> None:
    """Create dest (and parents), translating failures into DownloadError."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Cannot create the data directory {dest} to download {url} into: {exc}. "
            "Point data.root at a writable folder or create the directory yourself."
        ) from exc


def _new_temp_file(dest: Path, folder: str) -> Path:
    """Create an empty, uniquely named temp file inside dest and return its path."""
    fd, name = tempfile.mkstemp(prefix=f".{folder}.", suffix=".download", dir=dest)
    os.close(fd)
    return Path(name)


# ------------------------------------------------------------------------ download


def _download(url: str, archive: Path, dest: Path, folder: str, progress: bool) -> None:
    """Download url to archive, translating network failures into DownloadError."""
    log.info("Downloading %s to %s", url, dest)
    try:
        torch.hub.download_url_to_file(url, str(archive), progress=progress)
    except (OSError, http.client.HTTPException) as exc:  # URLError/HTTPError are OSErrors
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(
            f"Could not download {url}: {reason}. The machine appears to be offline or the "
            f"URL is unreachable. Download the archive by hand and extract it so that "
            f"{dest / folder} exists, or point data.root at an existing data-set folder."
        ) from exc
    except ValueError as exc:  # urllib: "unknown url type"
        raise DownloadError(
            f"Invalid download URL {url!r}: {exc}. Fix the URL, or download the archive by "
            f"hand and extract it so that {dest / folder} exists."
        ) from exc


def _file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of the file at path, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(url: str, archive: Path, expected: str | None) -> None:
    """Check the archive's SHA-256 against expected, or log it when none is pinned."""
    actual = _file_sha256(archive)
    if expected is None:
        log.warning(
            "No SHA-256 pinned for %s; the downloaded archive has sha256 %s. Pin it with "
            "data.download.sha256=%s so that future downloads are verified.",
            url,
            actual,
            actual,
        )
        return
    if expected.strip().lower() != actual:
        archive.unlink(missing_ok=True)
        raise DownloadError(
            f"SHA-256 mismatch for {url}: expected {expected.strip()}, got {actual}. The "
            "downloaded file was deleted. It may be truncated or altered, or a network proxy "
            "may have returned an error page instead: check the url and your network/proxy "
            "settings, or, if you trust the new file, set data.download.sha256 to its hash."
        )
    log.debug("SHA-256 of %s verified: %s", url, actual)


# ----------------------------------------------------------------- member checks


def _split(name: str) -> list[str]:
    """Split an archive member name into components, dropping empty and '.' parts."""
    return [part for part in _SEP_RE.split(name) if part not in ("", ".")]


def _is_absolute(name: str) -> bool:
    """Whether name is absolute on POSIX or Windows ('/x', '\\x', 'C:x')."""
    return name.startswith(("/", "\\")) or bool(_DRIVE_RE.match(name))


def _walk_problem(parts: list[str], symlinks: set[str], final_may_be_link: bool) -> str | None:
    """Walk parts from the extraction root; describe how they escape it or pass through a link."""
    stack: list[str] = []
    for index, part in enumerate(parts):
        if part == "..":
            if not stack:
                return "resolves outside the extraction directory"
            stack.pop()
            continue
        stack.append(part)
        here = "/".join(stack)
        is_last = index == len(parts) - 1
        if here in symlinks and not (is_last and final_may_be_link):
            return f"goes through the symbolic link {here!r}"
    return None


def _member_problem(
    name: str, link_target: str | None, hardlink: bool, symlinks: set[str]
) -> str | None:
    """Describe why a member (with optional link target) is unsafe, or return None."""
    if _is_absolute(name):
        return "has an absolute path"
    parts = _split(name)
    if ".." in parts:
        return "has a '..' path component"
    problem = _walk_problem(parts, symlinks, final_may_be_link=True)
    if problem or link_target is None:
        return f"path {problem}" if problem else None
    kind = "hard link" if hardlink else "symbolic link"
    if _is_absolute(link_target):
        return f"is a {kind} to the absolute path {link_target!r}"
    base = [] if hardlink else parts[:-1]
    problem = _walk_problem(base + _split(link_target), symlinks, not hardlink)
    if problem:
        return f"is a {kind} to {link_target!r}, which {problem}"
    return None


def _refuse_unsafe(
    url: str, members: list[tuple[str, str | None, bool]], symlinks: set[str]
) -> None:
    """Raise DownloadError for the first unsafe (name, link_target, is_hardlink) member."""
    for name, link_target, hardlink in members:
        problem = _member_problem(name, link_target, hardlink, symlinks)
        if problem:
            raise DownloadError(
                f"Refusing to extract the archive downloaded from {url}: member {name!r} "
                f"{problem}. Nothing was extracted. Check that the url points at the intended "
                "data set; if you trust the archive, inspect and extract it by hand and point "
                "data.root at the result."
            )


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Return the target of a symlink zip member, or None for other members."""
    if not stat.S_ISLNK(info.external_attr >> 16):
        return None
    with zf.open(info) as fh:
        return fh.read(_MAX_LINK_TARGET).decode("utf-8", errors="replace")


def _check_zip(url: str, zf: zipfile.ZipFile) -> None:
    """Refuse zip members that are absolute, contain '..' or link outside."""
    members = [(info.filename, _zip_link_target(zf, info), False) for info in zf.infolist()]
    symlinks = {"/".join(_split(name)) for name, target, _ in members if target is not None}
    _refuse_unsafe(url, members, symlinks)


def _check_tar(url: str, tf: tarfile.TarFile) -> None:
    """Refuse tar members that are absolute, contain '..' or link outside."""
    infos = tf.getmembers()
    members = [
        (info.name, info.linkname if (info.issym() or info.islnk()) else None, info.islnk())
        for info in infos
    ]
    symlinks = {"/".join(_split(info.name)) for info in infos if info.issym()}
    _refuse_unsafe(url, members, symlinks)


# ---------------------------------------------------------------------- extraction


def _extract_zip(url: str, archive: Path, into: Path) -> None:
    """Check and extract a zip archive into the directory into."""
    with zipfile.ZipFile(archive) as zf:
        _check_zip(url, zf)
        zf.extractall(into)


def _extract_tar(url: str, archive: Path, into: Path) -> None:
    """Check and extract a tar archive (any compression) into the directory into."""
    with tarfile.open(archive) as tf:
        _check_tar(url, tf)
        if hasattr(tarfile, "data_filter"):
            try:
                tf.extractall(into, filter="data")
            except tarfile.FilterError as exc:
                info = getattr(exc, "tarinfo", None)
                member = info.name if info is not None else "?"
                raise DownloadError(
                    f"Refusing to extract the archive downloaded from {url}: member "
                    f"{member!r} is unsafe ({exc}). Nothing was extracted. Check that the url "
                    "points at the intended data set."
                ) from exc
        else:  # Python without extraction filters: rely on _check_tar alone
            tf.extractall(into)


def _extract(url: str, archive: Path, into: Path) -> None:
    """Extract a zip or tar archive (detected by content) into the directory into."""
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(url, archive, into)
        elif tarfile.is_tarfile(archive):
            _extract_tar(url, archive, into)
        else:
            raise DownloadError(
                f"The file downloaded from {url} is neither a zip nor a tar archive (it may be "
                "an HTML error or login page). Check the url, or download the archive by hand "
                "and point data.root at the extracted folder."
            )
    except DownloadError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, RuntimeError) as exc:
        # RuntimeError: encrypted zip members; the others: truncated or damaged archives.
        raise DownloadError(
            f"The archive downloaded from {url} is corrupt or unsupported ({exc}). Delete it "
            "and retry, check the url, or download and extract it by hand."
        ) from exc


def _top_level_folder(url: str, extracted: Path, folder: str) -> Path:
    """Return extracted/folder, or raise DownloadError listing what the archive contains."""
    candidate = extracted / folder
    if candidate.is_dir() and not candidate.is_symlink():
        return candidate
    found = sorted(entry.name for entry in extracted.iterdir())
    raise DownloadError(
        f"The archive downloaded from {url} has no top-level folder {folder!r}; its top level "
        f"contains {found if found else 'nothing'}. Set the data-set folder name to match the "
        "archive, or check the url."
    )


def _move_into_place(source: Path, target: Path) -> None:
    """Atomically rename source to target, accepting a target another process created."""
    try:
        os.replace(source, target)
    except OSError:
        if target.is_dir():
            log.info("%s appeared while extracting; keeping the existing folder", target)
            return
        raise


def _remove_tree(path: Path) -> None:
    """Remove a temporary directory tree, warning if anything is left."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("Could not fully remove temporary directory %s; delete it by hand", path)


def _extract_folder(url: str, archive: Path, dest: Path, folder: str) -> None:
    """Extract archive into a temp dir inside dest and move its folder to dest/folder."""
    extracted = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extract", dir=dest))
    try:
        log.info("Extracting %s into %s", url, dest / folder)
        _extract(url, archive, extracted)
        _move_into_place(_top_level_folder(url, extracted, folder), dest / folder)
    finally:
        _remove_tree(extracted)
