"""Read the big list of a JSON file one element at a time (Karpathy ``images``, VQA ``questions`` / ``annotations``).

``json.loads`` of VQA v2's 350 MB training annotations builds every one of its 4.9M dicts before the caller
can keep the few fields it needs (~2 GB of Python objects). :func:`iter_list` walks the top-level object with
the standard library's own decoder and hands out the elements of one list as they are parsed, so a caller's
peak is the text plus what it keeps. For well-formed input the elements equal ``json.loads(text)[key]``
(tests/datasets/test_json_list.py); malformed JSON raises ``json.JSONDecodeError`` as ``json.loads`` would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["NotAListError", "iter_list", "read_list"]

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class NotAListError(ValueError):
    """Well-formed JSON, but not an object holding a list under the key asked for."""


def _skip(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _expect(text: str, pos: int, chars: str) -> tuple[str, int]:
    pos = _skip(text, pos)
    if pos >= len(text) or text[pos] not in chars:
        what = " or ".join(repr(c) for c in chars)
        raise json.JSONDecodeError(f"Expecting {what}", text, pos)
    return text[pos], pos + 1


def iter_list(text: str, key: str) -> Iterator[Any]:
    """The elements of the list ``json.loads(text)[key]``, parsed one by one.

    The whole document is checked as ``json.loads`` checks it (values of the other keys are parsed and
    dropped, nothing may follow the object). Raises :class:`NotAListError` when the top level is not an
    object or ``key`` is absent, repeated or not a list.
    """
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        _DECODER.raw_decode(text, pos)  # malformed JSON raises here; a well-formed non-object:
        raise NotAListError(f"the top level is not an object with a {key!r} list")
    found = False
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):  # {}
        pos += 1
    else:
        while True:
            pos = _skip(text, pos)
            if not text.startswith('"', pos):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
            name, pos = json.decoder.scanstring(text, pos + 1)
            _, pos = _expect(text, pos, ":")
            pos = _skip(text, pos)
            if name != key:
                _, pos = _DECODER.raw_decode(text, pos)
            elif found:
                raise NotAListError(f"the key {key!r} appears twice")
            elif not text.startswith("[", pos):
                _DECODER.raw_decode(text, pos)
                raise NotAListError(f"{key!r} is not a list")
            else:
                found = True
                pos = _skip(text, pos + 1)
                if text.startswith("]", pos):
                    pos += 1
                else:
                    while True:
                        element, pos = _DECODER.raw_decode(text, _skip(text, pos))
                        yield element
                        sep, pos = _expect(text, pos, ",]")
                        if sep == "]":
                            break
            sep, pos = _expect(text, pos, ",}")
            if sep == "}":
                break
    end = _skip(text, pos)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    if not found:
        raise NotAListError(f"no {key!r} list at the top level")


def read_list(path: str | Path, key: str) -> Iterator[Any]:
    """:func:`iter_list` over a UTF-8 file (read whole as text: 1 byte per ASCII character, no objects)."""
    return iter_list(Path(path).read_text(encoding="utf-8"), key)
