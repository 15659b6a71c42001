"""Shared pieces of the importers: the Row type, errors and strict field parsers."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from butd.shards.spec import StoreError


class ImportRowError(StoreError):
    """One row of a source file is bad; the message is "file:line: reason"."""


class RowParseError(ValueError):
    """Raised inside readers; turned into a Row with an error."""


@dataclass
class Row:
    """One image read from a source: either a record or the reason it is bad."""

    image_id: str | None
    where: str
    record: dict[str, np.ndarray] | None = None
    error: str | None = None


def b64_array(text: bytes | str, dtype: str, name: str) -> np.ndarray:
    """Strictly decode a base64 field into a 1-d little-endian array."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RowParseError(f"field {name!r} is not valid base64 ({exc})") from None
    dt = np.dtype(dtype)
    if len(raw) % dt.itemsize:
        raise RowParseError(f"field {name!r} holds {len(raw)} bytes, not a whole number of {dt.name}")
    return np.frombuffer(raw, dtype=dt)


def to_int(text: Any, name: str) -> int:
    """Parse an integer field; accepts integral floats such as '640.0' (some writers emit them)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        return int(text)
    except (TypeError, ValueError):
        pass
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RowParseError(f"field {name!r} is not a number: {str(text)[:40]!r}") from None
    if not value.is_integer():
        raise RowParseError(f"field {name!r} is not an integer: {value}")
    return int(value)


def per_box(arr: np.ndarray, num_boxes: int, width: int | None, name: str) -> np.ndarray:
    """Reshape a flat array to [num_boxes, width] (or [num_boxes]), checking the count."""
    if num_boxes <= 0:
        raise RowParseError(f"num_boxes={num_boxes} must be positive")
    if arr.size == 0:
        raise RowParseError(f"field {name!r} is empty")
    if width is None:
        if arr.size != num_boxes:
            raise RowParseError(f"num_boxes={num_boxes} but {name!r} has {arr.size} values")
        return arr
    if arr.size % num_boxes or (width > 0 and arr.size != num_boxes * width):
        raise RowParseError(f"num_boxes={num_boxes} but {name!r} has {arr.size} values "
                            f"({arr.size / num_boxes:g} per box{'' if width <= 0 else f', expected {width}'})")
    return arr.reshape(num_boxes, -1)
