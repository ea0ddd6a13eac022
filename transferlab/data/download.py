"""Download a data-set archive once, verify its SHA-256 and extract it safely.

:func:`fetch_dataset` downloads into a ``.partial`` temporary in ``dest_dir``, checks that it got
every byte the server announced, hashes it, extracts it into a temporary directory there and
renames the data-set folder into place; the temporaries go on success and on every error, and
those of a killed process (named by :func:`transferlab.files.temporary_name`) on the next call, so
no half data set is ever left. Extraction and its safety rules are in :mod:`transferlab.data.archives`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path, PureWindowsPath

from tqdm import tqdm  # a dependency of lightning

from transferlab.data.archives import extract_archive, unwritable
from transferlab.errors import DownloadError
from transferlab.files import remove_stale_temporaries, temporary_name

__all__ = ["DownloadError", "fetch_dataset"]

log = logging.getLogger(__name__)

_CHUNK_SIZE = 1 << 20  # bytes downloaded or hashed per read: large enough to be fast, small enough for any RAM
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}  # not the network
_TIMEOUT_S = 60  # a server silent this long fails the download instead of hanging it



def fetch_dataset(
    url: str, dest_dir: str | Path, folder: str, sha256: str | None = None, progress: bool = True
) -> Path:
    """Return dest_dir/folder, downloading and extracting the archive at url first if missing.

    Raises DownloadError (with the url or path and the fix) when the archive cannot be
    downloaded, fails the SHA-256 check, holds unsafe members or lacks ``folder``.
    """
    dest = Path(dest_dir).expanduser()
    folder = _check_folder_name(folder)
    target = dest / folder
    if target.is_dir():
        log.debug("Data set already present at %s; not downloading", target)
        return target
    if target.exists():
        raise DownloadError(
            f"{target} exists but is not a directory, so the data set from {url} cannot be "
            f"extracted there. Remove or rename {target}, or point data.root at an existing "
            "data-set folder."
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"Cannot create the data directory {dest} to download {url} into: {exc}. "
            "Point data.root at a writable folder or create the directory yourself."
        ) from exc
    remove_stale_temporaries(dest, folder)  # a killed download's archive, .partial file and .extract folder
    archive = dest / temporary_name(folder, "download")
    try:
        _download(url, archive, target, progress)
        _verify_sha256(url, archive, sha256)
        extracted = dest / temporary_name(folder, "extract")
        shutil.rmtree(extracted, ignore_errors=True)  # this process's, from an earlier call that could not remove it
        extracted.mkdir()
        try:
            log.info("Extracting %s into %s", url, target)
            extract_archive(url, archive, extracted, folder)
            _move_into_place(_top_level_folder(url, extracted, folder), target)
        finally:
            shutil.rmtree(extracted, ignore_errors=True)
            if extracted.exists():
                log.warning("Could not fully remove temporary directory %s; delete it", extracted)
    finally:
        archive.unlink(missing_ok=True)
    log.info("Data set ready at %s", target)
    return target


def _check_folder_name(folder: str) -> str:
    """Return folder if it is a single plain directory name, else raise DownloadError."""
    path = PureWindowsPath(folder)  # splits on '/' and '\\' and knows drives: strictest reading
    if len(path.parts) != 1 or path.anchor or path.parts[0] == "..":
        raise DownloadError(
            f"Invalid data-set folder name {folder!r}: it must be a single directory name "
            "(no '/', '\\', '..' or absolute path), i.e. the top-level folder inside the archive."
        )
    return path.parts[0]


def _download(url: str, archive: Path, target: Path, progress: bool) -> None:
    """Download url to archive through a ``.partial`` temporary, checking the length the server announced."""
    log.info("Downloading %s to %s", url, target.parent)
    partial = archive.with_name(temporary_name(target.name, "partial"))
    received, expected = 0, None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "transferlab"})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, partial.open("wb") as out:
            length = response.headers.get("Content-Length", "").strip()
            expected = int(length) if length.isdigit() and not getattr(response, "chunked", False) else None
            with tqdm(total=expected, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024) as bar:
                while chunk := response.read1(_CHUNK_SIZE):  # what has come, so progress shows as it comes
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise _incomplete(url, received, expected, target)
        os.replace(partial, archive)
    except DownloadError:  # a ValueError too
        raise
    except http.client.IncompleteRead as exc:  # a chunked body cut short
        raise _incomplete(url, received + len(exc.partial), expected, target) from exc
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"Could not download {url}: the server answered HTTP {exc.code} ({exc.reason}). Check the url, or "
            f"download the archive by hand and extract it so that {target} exists, or point data.root at an "
            "existing data-set folder."
        ) from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError) and exc.errno in _DISK_ERRNOS:
            raise unwritable(url, partial.parent, exc) from exc
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(
            f"Could not download {url}: {reason}. The machine appears to be offline or the "
            f"URL is unreachable. Download the archive by hand and extract it so that "
            f"{target} exists, or point data.root at an existing data-set folder."
        ) from exc
    except ValueError as exc:  # urllib: "unknown url type"
        raise DownloadError(
            f"Invalid download URL {url!r}: {exc}. Fix the URL, or download the archive by "
            f"hand and extract it so that {target} exists."
        ) from exc
    finally:
        partial.unlink(missing_ok=True)


def _incomplete(url: str, received: int, expected: int | None, target: Path) -> DownloadError:
    """The error for a download whose connection closed before the whole body came."""
    got = f"got {received} of {expected} bytes" if expected is not None else f"got {received} bytes"
    return DownloadError(
        f"Incomplete download: {got} from {url} before the connection closed; the partial file was deleted. "
        "Retry; if it keeps failing, check your network or proxy, or download the archive by hand and extract "
        f"it so that {target} exists."
    )


def _verify_sha256(url: str, archive: Path, expected: str | None) -> None:
    """Check the archive's SHA-256 against expected, or log it when none is pinned."""
    digest = hashlib.sha256()
    with archive.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if expected is None:
        log.warning(
            "No SHA-256 pinned for %s; the downloaded archive has sha256 %s. Pin it with "
            "data.download.sha256=%s so that future downloads are verified.", url, actual, actual
        )
    elif expected.strip().lower() != actual:
        raise DownloadError(
            f"SHA-256 mismatch for {url}: expected {expected.strip()}, got {actual}. The "
            "downloaded file was deleted. It may be truncated or altered, or a network proxy "
            "may have returned an error page instead: check the url and your network/proxy "
            "settings, or, if you trust the new file, set data.download.sha256 to its hash."
        )


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
