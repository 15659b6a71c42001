"""Store writes that fail for a reason of the disk: said as the OSError they are (the CLI says it in one line)."""

from __future__ import annotations

import errno
import functools
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["disk_error", "lmdb_io"]


def disk_error(exc: Exception, path: Path, needed: int = 0) -> OSError:
    """An LMDB write failure as the OSError it is: LMDB reports a full disk as an I/O error, so the free space
    of ``path``'s file system decides between ENOSPC ("free space and rerun") and EIO."""
    if not path.exists():
        return OSError(errno.ENOENT, "the folder vanished while butd wrote into it", str(path))
    try:
        free = shutil.disk_usage(path if path.is_dir() else path.parent).free
    except OSError:
        free = 0
    if free < max(64 << 20, 2 * needed):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"cannot write the store ({exc})", str(path))


def lmdb_io(method: Any) -> Any:
    """A ShardWriter method whose LMDB failures become :func:`disk_error` (the CLI says it in one line)."""
    import lmdb

    @functools.wraps(method)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except lmdb.Error as exc:
            raise disk_error(exc, self.path, self._cur_bytes) from None
    return wrapped
