"""One writer per folder: an advisory lock (``fcntl.flock``) on ``FOLDER/.butd.lock`` holding pid and host.

Taken before anything is written into a feature store (``butd extract``, imports) or a run directory
(``butd train``); a second writer stops at once with one line naming the holder. The kernel drops a flock
when its process dies, so a lock left by a killed process never blocks the next run (the stale file is
simply taken over). Readers never take it. The lock file is removed on release; the store's manifest does
not list it, so a store is the same with or without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from butd.errors import UserError

__all__ = ["LOCK_NAME", "FolderLocked", "folder_lock", "holder_of"]

LOCK_NAME = ".butd.lock"


class FolderLocked(UserError):
    """Another process holds the folder's lock."""


def holder_of(folder: str | Path) -> dict | None:
    """What the lock file says about its holder (pid, host, since, command), or None."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None


def _holder_words(folder: Path) -> str:
    h = holder_of(folder) or {}
    if not h:
        return "held by another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
    return f"held by pid {h.get('pid')} on {h.get('host')} since {since}: {h.get('command', '')}".rstrip(": ")


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (the folder is created if needed).

    Raises :class:`FolderLocked` (one line: the holder's pid, host and command) when another process holds it,
    and the I/O errors of creating the folder or the lock file (the CLI says them in one line).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FolderLocked(f"another butd process is writing this {what}", f"{folder}: {_holder_words(folder)}",
                               "wait for it to finish (or stop it), then rerun the same command") from None
        try:  # the file we locked may have been removed by a holder releasing it meanwhile: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode("utf-8"))
        yield folder
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiter that opened the old file retries on the new one
        os.close(fd)
