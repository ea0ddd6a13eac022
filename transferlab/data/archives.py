"""Extracting a downloaded data-set archive safely: zip through ``zipfile``, tar through tarfile's ``data`` filter.

Refused here is only what those would let through *silently* as a different data set: zip names
zipfile rewrites, zip links it writes as files, absolute tar names the filter strips, and links out of
the data-set folder (the filter only guards the extraction directory). An archive that starts like one
but cannot be read to its end is called truncated or damaged, not an HTML page.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from transferlab.errors import DownloadError

__all__ = ["extract_archive", "unwritable"]

# How each archive format starts (tar: "ustar" at offset 257): a file that starts so but cannot be
# read is a truncated or damaged archive, not an HTML page.
_MAGIC = {"zip": (0, b"PK\x03\x04"), "gzip": (0, b"\x1f\x8b"), "bzip2": (0, b"BZh"),
          "xz": (0, b"\xfd7zXZ\x00"), "tar": (257, b"ustar")}


def _refused(url: str, member: str, reason: str) -> DownloadError:
    """The error for an archive member that is not extracted as it stands."""
    return DownloadError(
        f"Refusing to extract the archive downloaded from {url}: member {member!r} {reason}. "
        "Nothing was kept. Check that the url points at the intended data set; if you trust the "
        "archive, inspect and extract it by hand and point data.root at the result."
    )


def _extract_zip(url: str, archive: Path, into: Path) -> None:
    """Extract a zip archive, refusing members that zipfile would rewrite rather than refuse."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = PureWindowsPath(info.filename)  # both separators, drives and UNC roots
            if path.anchor:  # zipfile would drop the prefix and extract it elsewhere
                raise _refused(url, info.filename, "has an absolute path")
            if ".." in path.parts:  # zipfile would drop the '..' and flatten the path
                raise _refused(url, info.filename, "has a '..' path component")
            if stat.S_ISLNK(info.external_attr >> 16):  # Unix mode in the high 16 bits
                reason = "is a symbolic link (zipfile would write a file holding its target)"
                raise _refused(url, info.filename, reason)
        zf.extractall(into)


def _extract_tar(url: str, archive: Path, into: Path, folder: str) -> None:
    """Extract a tar archive (any compression) through tarfile's "data" filter."""
    # The filter resolves paths with os.path.realpath; on Pythons before 3.10.18 / 3.11.13 / 3.12.11
    # crafted link chains slip past it (CVE-2025-4517). Those chains need a member whose path goes
    # through a link of the archive, which no data set needs: such members are refused by name.
    if not hasattr(tarfile, "data_filter"):
        raise DownloadError(
            f"The archive downloaded from {url} is a tar file, and this Python "
            f"({sys.version.split()[0]}) lacks tarfile's extraction filters, without which it "
            "cannot be extracted safely. Use Python 3.10.12, 3.11.4, 3.12 or newer, or extract "
            "the archive by hand and point data.root at the result."
        )
    top = Path(os.path.realpath(into / folder))
    links: set[PurePosixPath] = set()

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        name = PurePosixPath(member.name)
        if name.is_absolute():  # data_filter would silently strip the '/'
            raise _refused(url, member.name, "has an absolute path")
        if links.intersection(name.parents):
            raise _refused(url, member.name, "has a path through a symbolic link of the archive")
        if member.issym():
            links.add(name)
        try:
            safe = tarfile.data_filter(member, path)
        except tarfile.FilterError as exc:
            raise _refused(url, member.name, f"is unsafe: {exc}") from exc
        # data_filter keeps links inside the extraction directory; the data-set folder is what
        # is moved into place, so a link in it must not point at a sibling of it either.
        # realpath follows links already extracted, as data_filter does.
        if safe.issym() or safe.islnk():
            start = os.path.join(path, os.path.dirname(safe.name)) if safe.issym() else path
            link = Path(os.path.realpath(os.path.join(path, safe.name)))
            points_to = Path(os.path.realpath(os.path.join(start, safe.linkname)))
            if link.is_relative_to(top) and not points_to.is_relative_to(top):
                reason = f"links to {safe.linkname!r}, outside the data-set folder {folder!r}"
                raise _refused(url, member.name, reason)
        return safe

    with tarfile.open(archive) as tf:
        tf.extractall(into, filter=check)
        while tf.fileobj.read(1 << 20):  # to the compressed stream's end, where gzip and xz check their CRC
            pass


def extract_archive(url: str, archive: Path, into: Path, folder: str) -> None:
    """Extract a zip or tar archive (detected by content) into the directory into."""
    kind = _archive_kind(archive)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(url, archive, into)
        elif tarfile.is_tarfile(archive):
            _extract_tar(url, archive, into, folder)
        elif kind is not None:
            raise _damaged(url, kind, f"it cannot be read as a {'zip' if kind == 'zip' else 'tar'} archive")
        else:
            raise DownloadError(
                f"The file downloaded from {url} is neither a zip nor a tar archive (it may be "
                "an HTML error or login page). Check the url, or download the archive by hand "
                "and point data.root at the extracted folder."
            )
    except RuntimeError as exc:  # zipfile: encrypted members
        raise DownloadError(
            f"The archive downloaded from {url} cannot be extracted ({exc}). Download and extract it by hand, "
            "and point data.root at the extracted folder."
        ) from exc
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise _damaged(url, kind, str(exc) or type(exc).__name__) from exc
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the archive: full, read-only, no permission
            raise unwritable(url, into, exc) from exc
        raise _damaged(url, kind, str(exc) or type(exc).__name__) from exc  # bz2: "Invalid data stream"


def _archive_kind(archive: Path) -> str | None:
    """The archive format archive starts like (zip, gzip, bzip2, xz, tar), or None."""
    with archive.open("rb") as fh:
        head = fh.read(512)
    return next((kind for kind, (at, magic) in _MAGIC.items() if head[at:at + len(magic)] == magic), None)


def _damaged(url: str, kind: str | None, reason: str) -> DownloadError:
    """The error for an archive that cannot be read to its end: mostly a download cut short."""
    start = f"it starts as a {kind} file, but " if kind else ""
    return DownloadError(
        f"The archive downloaded from {url} is truncated or damaged: {start}{reason}. It was deleted; retry the "
        "download. If it keeps failing, check the url and your network or proxy, or download and extract the "
        "archive by hand and point data.root at the result."
    )


def unwritable(url: str, folder: Path, error: OSError) -> DownloadError:
    """The error for a data set that cannot be written to disk (full, read-only, no permission)."""
    return DownloadError(
        f"Could not write the data set from {url} into {folder}: {error.strerror or error}. Free space there or "
        "make it writable, or point paths.data_dir (data.root) at a folder on a disk with room, then retry."
    )
