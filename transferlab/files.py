"""Writing files so that a reader (or a crash) never sees half of one, and clearing what a killed writer left."""

import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ".<name>.<host>.<pid>.<kind>": whose temporary it is, so a later process can tell a dead writer's from a live one's
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(?P<kind>[a-z]+)$")


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "host"


def temporary_name(name: str, kind: str = "tmp") -> str:
    """A hidden name for a file or folder being written on the way to ``name``, unique to this process.

    ``kind`` (``tmp``, ``download``, ``partial``, ``extract``) says what it is; host and process id
    let :func:`remove_stale_temporaries` remove it once its writer is dead.
    """
    return f".{name}.{_host()}.{os.getpid()}.{kind}"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | Path, name: str = "*") -> list[Path]:
    """Remove the temporaries in ``folder`` (for ``name``, a glob) whose writer, on this host, is dead.

    A process killed while writing (kill -9, an out-of-memory kill, a power cut) leaves its
    temporary behind; a checkpoint's is as large as the checkpoint. Temporaries of live processes,
    and of other hosts sharing the folder, are kept. Returns what was removed.
    """
    folder, host, removed = Path(folder), _host(), []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".{name}.*.*.*"):
        match = _TEMPORARY.match(path.name)
        if match is None or match["host"] != host or _process_is_alive(int(match["pid"])):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process removed it first
            continue
        removed.append(path)
    if removed:
        log.info("Removed %d temporary file(s) left by killed processes in %s: %s", len(removed), folder,
                 ", ".join(path.name for path in removed))
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it.

    The temporary name carries the host and process id (:func:`temporary_name`), so processes
    writing the same file (DDP ranks) never share one, and a killed writer's is recognised later.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(temporary_name(path.name))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomically(path: str | Path, content: Any) -> None:
    """Write ``content`` as indented JSON through :func:`atomic_path`."""
    write_text_atomically(path, json.dumps(content, indent=2) + "\n")
