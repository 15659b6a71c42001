"""Keep metric libraries' own output off the terminal: pycocoevalcap prints (``{'testlen': ...}``, ``ratio:``)
and its Java tools write straight to the process's file descriptors (``PTBTokenizer tokenized ...``, SPICE).

``library_output(verbose)`` captures both levels while a library call runs: Python's ``sys.stdout`` /
``sys.stderr`` and file descriptors 1 and 2 (which child processes inherit). The text is shown afterwards
on stderr only when ``verbose``, or when the call fails (so a broken Java install still explains itself).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["library_output"]


@contextlib.contextmanager
def _fds_to(target: int) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``target`` for the duration; restore them after."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def library_output(verbose: bool = False) -> Iterator[io.StringIO]:
    """Capture everything a library prints inside the block; replay it to stderr if ``verbose`` or on error.

    Yields the buffer of Python-level text (the file-descriptor text is appended to it on exit).
    """
    text = io.StringIO()
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as raw:
        try:
            with _fds_to(raw.fileno()), contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield text
        except BaseException:
            failed = True
            raise
        finally:
            raw.seek(0)
            text.write(raw.read().decode("utf-8", "replace"))
            if (verbose or failed) and text.getvalue():
                sys.stderr.write(text.getvalue())
                sys.stderr.flush()
