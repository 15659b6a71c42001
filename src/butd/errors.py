"""The one exception type for user mistakes (click-free, so every stage can raise it).

The CLI renders it as the single line ``Error: <what> (<where>): <what to do>`` and exits with 2 for
usage mistakes (a bad option, a file of the wrong kind) and 1 for failures (the input is broken).
"""

from __future__ import annotations

import errno

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "UserError", "io_error"]

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UserError(ValueError):
    """A mistake the user can fix: what went wrong, where (a file or value), and what to do.

    A ``ValueError``, so library callers that catch bad values keep working.
    """

    def __init__(self, what: str, where: str | object = "", todo: str = "", *, usage: bool = False) -> None:
        self.what, self.where, self.todo, self.usage = what, str(where), todo, usage
        super().__init__(self.line())

    @property
    def exit_code(self) -> int:
        return EXIT_USAGE if self.usage else EXIT_FAILURE

    def line(self) -> str:
        """``<what> (<where>): <what to do>`` with the empty parts left out."""
        text = self.what + (f" ({self.where})" if self.where else "")
        return text + (f": {self.todo}" if self.todo else "")


_IO_TODO = {
    errno.ENOSPC: ("no space left on the device", "free space and rerun the same command"),
    errno.EDQUOT: ("disk quota exceeded", "free space and rerun the same command"),
    errno.EACCES: ("permission denied", "make it writable (or choose another path), then rerun the same command"),
    errno.EPERM: ("operation not permitted", "make it writable (or choose another path), then rerun the same command"),
    errno.EROFS: ("the file system is read-only", "choose a path on a writable file system"),
    errno.ENOENT: ("no such file or directory", "check the path; if a folder vanished while butd wrote into it, "
                                                "rerun the same command"),
}


def io_error(exc: OSError) -> UserError:
    """The one line for a failed file operation: what (in words), which path, and what to do."""
    where = exc.filename or ""
    if exc.errno in _IO_TODO:
        what, todo = _IO_TODO[exc.errno]
        if exc.errno == errno.ENOENT and exc.strerror and "vanished" in exc.strerror:
            what = exc.strerror
        return UserError(what, where, todo)
    return UserError(exc.strerror or str(exc).splitlines()[0] or type(exc).__name__, where,
                     "fix it and rerun the same command")
