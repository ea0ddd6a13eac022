"""Tests for transferlab.download, served from a local HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import PROXY_VARS, Server
from transferlab.data.download import DownloadError, fetch_dataset
from transferlab.files import temporary_name

FOLDER = "hymenoptera_data"
GOOD_FILES = {
    f"{FOLDER}/train/ants/a.jpg": b"ant-a-bytes",
    f"{FOLDER}/train/bees/b.jpg": b"bee-b-bytes",
    f"{FOLDER}/val/ants/c.jpg": b"ant-c-bytes",
}
GOOD_FILES_ANY = next(iter(GOOD_FILES))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "data"


# ------------------------------------------------------------------ archive builders


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_zip(path: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so external_attr carries the mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar_gz(
    path: Path,
    files: dict[str, bytes],
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
) -> Path:
    """Files first, then symlinks, then hard links, each in the order given."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        links = [(tarfile.SYMTYPE, symlinks or {}), (tarfile.LNKTYPE, hardlinks or {})]
        for kind, targets in links:
            for name, target in targets.items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                tf.addfile(info)
    return path


def all_entries(path: Path) -> list[str]:
    """Every file, dir and link under path (hidden ones included), relative to path."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def assert_nothing_left(dest: Path) -> None:
    assert all_entries(dest) == []


# ----------------------------------------------------------------------------- tests


def test_zip_download_verifies_and_extracts(server: Server, dest: Path) -> None:
    archive = make_zip(server.root / "hymenoptera.zip", GOOD_FILES)

    result = fetch_dataset(
        server.url("hymenoptera.zip"), dest, FOLDER, sha256=sha256_of(archive), progress=False
    )

    assert result == dest / FOLDER
    for name, data in GOOD_FILES.items():
        assert (dest / name).read_bytes() == data
    # Only the data-set folder remains: no archive, no temp file, no temp dir.
    assert [p.name for p in dest.iterdir()] == [FOLDER]
    assert server.requests == ["/hymenoptera.zip"]


def test_second_call_makes_no_request(server: Server, dest: Path) -> None:
    archive = make_zip(server.root / "hymenoptera.zip", GOOD_FILES)
    url, digest = server.url("hymenoptera.zip"), sha256_of(archive)
    first = fetch_dataset(url, dest, FOLDER, sha256=digest, progress=False)
    assert len(server.requests) == 1
    archive.unlink()  # a new download would now fail with 404

    second = fetch_dataset(url, dest, FOLDER, sha256=digest, progress=False)

    assert second == first
    assert len(server.requests) == 1


def test_wrong_sha256_is_refused_and_cleaned_up(server: Server, dest: Path) -> None:
    archive = make_zip(server.root / "hymenoptera.zip", GOOD_FILES)
    wrong = "0" * 64

    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("hymenoptera.zip"), dest, FOLDER, sha256=wrong, progress=False)

    message = str(err.value)
    assert wrong in message
    assert sha256_of(archive) in message
    assert server.url("hymenoptera.zip") in message
    assert "data.download.sha256" in message
    assert_nothing_left(dest)


def test_sha256_is_case_insensitive(server: Server, dest: Path) -> None:
    archive = make_zip(server.root / "hymenoptera.zip", GOOD_FILES)
    digest = sha256_of(archive).upper()
    fetch_dataset(server.url("hymenoptera.zip"), dest, FOLDER, sha256=digest, progress=False)
    assert (dest / GOOD_FILES_ANY).is_file()


@pytest.mark.parametrize(
    ("files", "symlinks", "bad_member"),
    [
        pytest.param({"../evil.txt": b"evil"}, None, "../evil.txt", id="dotdot"),
        pytest.param(
            {f"{FOLDER}/sub/../../../evil.txt": b"evil"}, None, "../evil.txt", id="nested-dotdot"
        ),
        pytest.param({"..\\evil.txt": b"evil"}, None, "evil.txt", id="backslash-dotdot"),
        pytest.param({"ABSOLUTE": b"evil"}, None, "ABSOLUTE", id="absolute"),
        pytest.param({f"C:/{FOLDER}/a.jpg": b"evil"}, None, "C:/", id="drive"),
        pytest.param(
            {f"{FOLDER}/a.jpg": b"x"},
            {f"{FOLDER}/link": "../../outside"},
            "link",
            id="symlink-out",
        ),
        pytest.param(
            {f"{FOLDER}/a.jpg": b"x"},
            {f"{FOLDER}/passwd": "/etc/passwd"},
            "passwd",
            id="symlink-abs",
        ),
    ],
)
def test_malicious_zip_is_refused(
    server: Server, dest: Path, tmp_path: Path, files, symlinks, bad_member: str
) -> None:
    absolute = str(tmp_path / "abs.txt")
    files = {(absolute if k == "ABSOLUTE" else k): v for k, v in files.items()}
    bad_member = absolute if bad_member == "ABSOLUTE" else bad_member
    make_zip(server.root / "evil.zip", files, symlinks)
    outside_before = all_entries(tmp_path)

    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("evil.zip"), dest, FOLDER, progress=False)

    assert bad_member in str(err.value)
    assert "Refusing" in str(err.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not Path(absolute).exists()
    assert_nothing_left(dest)
    # Nothing appeared outside dest either (dest itself may have been created).
    assert [e for e in all_entries(tmp_path) if not e.startswith("data")] == outside_before


def test_zip_symlink_is_refused_even_inside(server: Server, dest: Path) -> None:
    # zipfile would write the link as a small file holding "train/ants/a.jpg": a wrong data set.
    make_zip(server.root / "ok.zip", GOOD_FILES, {f"{FOLDER}/alias.jpg": "train/ants/a.jpg"})

    with pytest.raises(DownloadError, match="is a symbolic link") as err:
        fetch_dataset(server.url("ok.zip"), dest, FOLDER, progress=False)

    assert f"{FOLDER}/alias.jpg" in str(err.value)
    assert_nothing_left(dest)


@pytest.mark.parametrize(
    ("files", "symlinks", "hardlinks", "bad_member", "reason"),
    [
        pytest.param({"../evil.txt": b"evil"}, {}, {}, "../evil.txt", "outside", id="dotdot"),
        pytest.param(
            {f"{FOLDER}/sub/../../../evil.txt": b"evil"},
            {},
            {},
            "../evil.txt",
            "outside",
            id="nested-dotdot",
        ),
        # tarfile's filter would strip the '/' and extract it inside: refused instead.
        pytest.param({"ABSOLUTE": b"evil"}, {}, {}, "ABSOLUTE", "absolute path", id="absolute"),
        pytest.param(
            {},
            {f"{FOLDER}/passwd": "/etc/passwd"},
            {},
            f"{FOLDER}/passwd",
            "absolute path",
            id="symlink-absolute",
        ),
        pytest.param(
            {}, {f"{FOLDER}/x": "../../x"}, {}, f"{FOLDER}/x", "outside", id="symlink-dotdot"
        ),
        pytest.param(
            # 'up' itself stays inside the folder, but a link placed *through* it escapes,
            # although its name and target look harmless when read as plain text (CVE-2025-4517).
            {},
            {f"{FOLDER}/sub/up": "..", f"{FOLDER}/sub/up/esc": "../../outside.txt"},
            {},
            f"{FOLDER}/sub/up/esc",
            "through a symbolic link",
            id="through-symlink",
        ),
        pytest.param(
            {},
            {},
            {f"{FOLDER}/passwd": "/etc/passwd"},
            f"{FOLDER}/passwd",
            "absolute path",
            id="hardlink-absolute",
        ),
        pytest.param(
            {},
            {},
            {f"{FOLDER}/x": "../outside.txt"},
            f"{FOLDER}/x",
            "outside",
            id="hardlink-dotdot",
        ),
    ],
)
def test_malicious_tar_is_refused(
    server: Server,
    dest: Path,
    tmp_path: Path,
    files: dict[str, bytes],
    symlinks: dict[str, str],
    hardlinks: dict[str, str],
    bad_member: str,
    reason: str,
) -> None:
    absolute = str(tmp_path / "abs.txt")
    files = {(absolute if k == "ABSOLUTE" else k): v for k, v in files.items()}
    bad_member = absolute if bad_member == "ABSOLUTE" else bad_member
    (tmp_path / "outside.txt").write_bytes(b"private")
    make_tar_gz(server.root / "evil.tar.gz", {**GOOD_FILES, **files}, symlinks, hardlinks)
    outside_before = all_entries(tmp_path)

    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("evil.tar.gz"), dest, FOLDER, progress=False)

    assert bad_member in str(err.value)
    assert reason in str(err.value)
    assert "Refusing" in str(err.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not Path(absolute).exists()
    assert (tmp_path / "outside.txt").read_bytes() == b"private"
    assert_nothing_left(dest)
    assert [e for e in all_entries(tmp_path) if not e.startswith("data")] == outside_before


@pytest.mark.parametrize(
    ("symlinks", "hardlinks", "bad_member", "reason"),
    [
        pytest.param({f"{FOLDER}/steal": "../private"}, {}, f"{FOLDER}/steal", "outside the data-set folder",
                     id="symlink"),
        pytest.param(
            {}, {f"{FOLDER}/steal": "private/secret.txt"}, f"{FOLDER}/steal", "outside the data-set folder",
            id="hardlink",
        ),
    ],
)
def test_tar_link_out_of_the_data_set_folder_is_refused(
    server: Server,
    dest: Path,
    symlinks: dict[str, str],
    hardlinks: dict[str, str],
    bad_member: str,
    reason: str,
) -> None:
    # Inside the extraction directory, so tarfile's filter allows it; but only FOLDER is kept.
    files = {**GOOD_FILES, "private/secret.txt": b"secret"}
    make_tar_gz(server.root / "sibling.tar.gz", files, symlinks, hardlinks)

    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("sibling.tar.gz"), dest, FOLDER, progress=False)

    assert bad_member in str(err.value)
    assert reason in str(err.value)
    assert_nothing_left(dest)


def test_good_tar_gz_is_extracted(server: Server, dest: Path) -> None:
    # Links inside the folder are kept; links elsewhere in the archive are neither checked
    # against the folder nor kept.
    files = {**GOOD_FILES, "extras/notes.txt": b"notes"}
    symlinks = {f"{FOLDER}/latest": "train", "extras/alias": "notes.txt"}
    hardlinks = {f"{FOLDER}/copy.jpg": f"{FOLDER}/train/ants/a.jpg"}
    archive = make_tar_gz(server.root / "ok.tgz", files, symlinks, hardlinks)

    digest = sha256_of(archive)
    result = fetch_dataset(server.url("ok.tgz"), dest, FOLDER, sha256=digest, progress=False)

    for name, data in GOOD_FILES.items():
        assert (dest / name).read_bytes() == data
    assert (result / "latest").is_symlink()
    assert (result / "latest" / "ants" / "a.jpg").read_bytes() == b"ant-a-bytes"
    assert (result / "copy.jpg").read_bytes() == b"ant-a-bytes"
    assert [p.name for p in dest.iterdir()] == [FOLDER]


def test_tar_needs_python_with_extraction_filters(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tar_gz(server.root / "ok.tgz", GOOD_FILES)
    monkeypatch.delattr(tarfile, "data_filter")  # as on Python < 3.10.12 / 3.11.4

    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("ok.tgz"), dest, FOLDER, progress=False)

    assert server.url("ok.tgz") in str(err.value)
    assert "3.11.4" in str(err.value)
    assert_nothing_left(dest)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_refused_archive_leaves_no_temporary_files(
    server: Server, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # The bad link comes after the good files, so the tar is refused half-way through extraction.
    bad = {f"{FOLDER}/zz-link": "../../outside"}
    if kind == "zip":
        make_zip(server.root / "evil", GOOD_FILES, bad)
    else:
        make_tar_gz(server.root / "evil", GOOD_FILES, bad)
    system_tmp = tmp_path / "system-tmp"  # catches temporaries created outside dest as well
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))

    with pytest.raises(DownloadError, match="Refusing"):
        fetch_dataset(server.url("evil"), dest, FOLDER, progress=False)

    assert dest.is_dir()  # the download did start in dest ...
    assert_nothing_left(dest)  # ... and no .download file or .extract directory is left there
    assert all_entries(system_tmp) == []


def test_archive_without_expected_folder(server: Server, dest: Path) -> None:
    make_zip(server.root / "other.zip", {"other_data/x.txt": b"x", "readme.txt": b"hi"})

    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("other.zip"), dest, FOLDER, progress=False)

    message = str(err.value)
    assert FOLDER in message
    assert "other_data" in message
    assert "readme.txt" in message
    assert_nothing_left(dest)


def test_not_an_archive(server: Server, dest: Path) -> None:
    (server.root / "page.zip").write_text("<html>login required</html>")

    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        fetch_dataset(server.url("page.zip"), dest, FOLDER, progress=False)

    assert_nothing_left(dest)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    url = f"http://127.0.0.1:{closed_port()}/x.zip"

    with pytest.raises(DownloadError) as err:
        fetch_dataset(url, dest, FOLDER, progress=False)

    message = str(err.value)
    assert url in message
    assert "offline" in message
    assert "by hand" in message
    assert str(dest / FOLDER) in message
    assert "data.root" in message
    assert_nothing_left(dest)


def test_http_404(server: Server, dest: Path) -> None:
    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("missing.zip"), dest, FOLDER, progress=False)

    assert server.url("missing.zip") in str(err.value)
    assert "the server answered HTTP 404 (File not found)" in str(err.value)
    assert "offline" not in str(err.value)
    assert_nothing_left(dest)


def test_existing_folder_needs_no_network(dest: Path) -> None:
    (dest / FOLDER).mkdir(parents=True)
    url = f"http://127.0.0.1:{closed_port()}/x.zip"
    assert fetch_dataset(url, dest, FOLDER, progress=False) == dest / FOLDER


@pytest.mark.parametrize("folder", ["../escape", "..", "a/b", "a\\b", "/abs", "C:x", ""])
def test_invalid_folder_name(dest: Path, folder: str) -> None:
    with pytest.raises(DownloadError, match="single directory name"):
        fetch_dataset("http://127.0.0.1:1/x.zip", dest, folder, progress=False)


def test_missing_sha256_logs_hash(
    server: Server, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = make_zip(server.root / "hymenoptera.zip", GOOD_FILES)
    digest = sha256_of(archive)

    with caplog.at_level(logging.WARNING, logger="transferlab.data.download"):
        fetch_dataset(server.url("hymenoptera.zip"), dest, FOLDER, sha256=None, progress=False)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(digest in r.getMessage() for r in warnings)
    assert f"data.download.sha256={digest}" in caplog.text
    assert (dest / GOOD_FILES_ANY).is_file()


# ------------------------------------------------------------ downloads cut short or killed


class BrokenServer:
    """A local HTTP server answering each path with raw headers and body, then closing the connection.

    With ``stall`` set, it sends the body and then waits for ``release`` before closing.
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[dict[str, str], bytes]] = {}
        self.stall, self.release = False, threading.Event()
        routes, this = self.routes, self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers, body = routes[self.path]
                self.send_response(200)
                for name, value in {**headers, "Connection": "close"}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if this.stall:
                    this.release.wait(60)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    server = BrokenServer()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=5)


BIG_FILES = {f"{FOLDER}/train/ants/{i}.jpg": os.urandom(40_000) for i in range(4)}  # incompressible


def test_download_shorter_than_its_content_length_is_incomplete(broken: BrokenServer, dest: Path) -> None:
    broken.routes["/short.zip"] = ({"Content-Length": str(5 * 1024 * 1024)}, b"PK\x03\x04" + bytes(100 * 1024 - 4))

    with pytest.raises(DownloadError) as err:
        fetch_dataset(broken.url("/short.zip"), dest, FOLDER, progress=True)

    message = str(err.value)
    assert message.startswith(f"Incomplete download: got 102400 of 5242880 bytes from {broken.url('/short.zip')}")
    assert "Retry; if it keeps failing" in message
    assert "neither a zip nor a tar" not in message
    assert_nothing_left(dest)


def test_chunked_download_cut_short_is_incomplete(broken: BrokenServer, dest: Path) -> None:
    chunk = bytes(100 * 1024)
    broken.routes["/chunked.zip"] = ({"Transfer-Encoding": "chunked"}, b"%x\r\n%s\r\n" % (len(chunk), chunk))

    with pytest.raises(DownloadError, match="Incomplete download: got 102400 bytes from"):
        fetch_dataset(broken.url("/chunked.zip"), dest, FOLDER, progress=False)

    assert_nothing_left(dest)


@pytest.mark.parametrize("kind", ["zip", "gz", "bz2", "xz"])
def test_archive_cut_short_without_a_length_is_called_truncated(
    broken: BrokenServer, dest: Path, tmp_path: Path, kind: str
) -> None:
    # Without Content-Length the end of the body is the closed connection: a cut looks like the end.
    archive = tmp_path / f"full.{kind}"
    if kind == "zip":
        make_zip(archive, BIG_FILES)
    else:
        with tarfile.open(archive, f"w:{kind}") as tf:
            for name, data in BIG_FILES.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    broken.routes["/cut"] = ({}, archive.read_bytes()[: archive.stat().st_size // 2])

    with pytest.raises(DownloadError) as err:
        fetch_dataset(broken.url("/cut"), dest, FOLDER, progress=False)

    message = str(err.value)
    assert f"The archive downloaded from {broken.url('/cut')} is truncated or damaged" in message
    assert "retry the download" in message
    assert "neither a zip nor a tar" not in message
    assert_nothing_left(dest)


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_downloads_leftovers_are_removed_by_the_next_download(
    broken: BrokenServer, server: Server, dest: Path
) -> None:
    archive = make_zip(server.root / "hymenoptera.zip", BIG_FILES)
    body = archive.read_bytes()
    broken.routes["/slow.zip"] = ({"Content-Length": str(len(body))}, body[:50_000])
    broken.stall = True
    code = f"from transferlab.data.download import fetch_dataset; fetch_dataset({broken.url('/slow.zip')!r}, " \
           f"{str(dest)!r}, {FOLDER!r}, progress=False)"
    killed = subprocess.Popen([sys.executable, "-c", code])
    partial = dest / temporary_name(FOLDER, "partial").replace(f".{os.getpid()}.", f".{killed.pid}.")
    try:
        wait_for(lambda: partial.is_file() and partial.stat().st_size > 0)
    finally:
        killed.kill()
        killed.wait()
    assert all_entries(dest) == [partial.name]  # what kill -9 leaves: named after its dead writer

    result = fetch_dataset(server.url("hymenoptera.zip"), dest, FOLDER, progress=False)

    assert [p.name for p in dest.iterdir()] == [FOLDER]
    assert (result / "train" / "ants" / "0.jpg").read_bytes() == BIG_FILES[f"{FOLDER}/train/ants/0.jpg"]


def test_temporaries_of_dead_processes_are_removed_and_of_live_ones_kept(server: Server, dest: Path) -> None:
    make_zip(server.root / "hymenoptera.zip", GOOD_FILES)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        names = {pid: [temporary_name(FOLDER, kind).replace(f".{os.getpid()}.", f".{pid}.")
                       for kind in ("download", "partial", "extract")] for pid in (dead.pid, live.pid)}
        dest.mkdir()
        for pid_names in names.values():
            (dest / pid_names[0]).write_bytes(b"half an archive")
            (dest / pid_names[1]).write_bytes(b"half a download")
            (dest / pid_names[2] / FOLDER).mkdir(parents=True)

        fetch_dataset(server.url("hymenoptera.zip"), dest, FOLDER, progress=False)

        assert sorted(p.name for p in dest.iterdir()) == sorted([FOLDER, *names[live.pid]])
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_an_archive_damaged_in_the_middle_is_called_damaged(
    broken: BrokenServer, dest: Path, tmp_path: Path, kind: str
) -> None:
    archive = tmp_path / f"full.{kind}"
    with tarfile.open(archive, f"w:{kind}") as tf:
        for name, data in BIG_FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # every byte there, some of them wrong
    broken.routes["/damaged"] = ({"Content-Length": str(len(data))}, bytes(data))

    with pytest.raises(DownloadError) as err:
        fetch_dataset(broken.url("/damaged"), dest, FOLDER, progress=False)

    assert f"The archive downloaded from {broken.url('/damaged')} is truncated or damaged" in str(err.value)
    assert_nothing_left(dest)


def test_a_full_disk_while_downloading_is_named_not_called_offline(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_zip(server.root / "data.zip", {f"{FOLDER}/train/a/1.jpg": b"x" * 100})
    real_open = Path.open

    def no_space_for_partials(self: Path, mode: str = "r", *args, **kwargs):
        if self.name.endswith(".partial") and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", no_space_for_partials)
    with pytest.raises(DownloadError) as err:
        fetch_dataset(server.url("data.zip"), dest, FOLDER, progress=False)

    message = str(err.value)
    assert f"Could not write the data set from {server.url('data.zip')} into {dest}: No space left" in message
    assert "offline" not in message and "paths.data_dir" in message
    assert_nothing_left(dest)
