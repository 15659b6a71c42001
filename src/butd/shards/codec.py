"""Record value encoding: one safetensors blob per record, decoded zero-copy.

Encoding goes through the reference `safetensors.numpy.save`. Decoding is our own, because the
reference always copies into fresh arrays; ours builds read-only numpy views straight onto the
buffer it is given (an mmap of the shard file), after checking every header entry. Nothing here
can execute code: the header is JSON and the payload is raw little-endian numbers.
tests/shards/test_codec.py proves decode(encode(x)) equals `safetensors.numpy.load` bit for bit.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
from safetensors.numpy import save as _st_save

from butd.shards.spec import MAX_HEADER_BYTES, DecodeError

RECORD_METADATA = {"format": "butd-record", "version": "1"}
# Headers up to this size are memoised (a real record's header is a few hundred bytes); the cap
# bounds the cache's memory whatever a hostile store contains.
_CACHED_HEADER_BYTES = 4096

# safetensors dtype codes <-> numpy dtypes (little-endian, as the format mandates).
_CODES = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "BOOL": np.dtype("?"),
}


def encode(record: dict[str, np.ndarray]) -> bytes:
    """Serialise a record (name -> array) to safetensors bytes."""
    # (np.ascontiguousarray would turn 0-d scalars into shape [1])
    arrays = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in record.items()}
    return _st_save(arrays, metadata=RECORD_METADATA)


def decode(buf, offset: int = 0, length: int | None = None) -> dict[str, np.ndarray]:
    """Decode the record stored at buf[offset:offset+length] into read-only views on `buf`.

    `buf` is anything exposing the buffer protocol (bytes, memoryview, mmap). Raises DecodeError
    for anything that is not a well-formed butd record, without interpreting the payload.
    """
    mv = memoryview(buf).cast("B")
    if length is None:
        length = mv.nbytes - offset
    if offset < 0 or length < 8 or offset + length > mv.nbytes:
        raise DecodeError(f"record of {length} bytes is too short to hold a header")
    n = int.from_bytes(mv[offset : offset + 8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > length:
        raise DecodeError(
            f"not a butd record: header length {n} does not fit in {length} bytes "
            "(corrupt, truncated, or a foreign payload such as a pickle)"
        )
    parse = _parse_header if n <= _CACHED_HEADER_BYTES else _parse_header.__wrapped__
    layout = parse(bytes(mv[offset + 8 : offset + 8 + n]), length - 8 - n)
    data_start = offset + 8 + n
    return {
        name: np.frombuffer(mv, dtype=dtype, count=count, offset=data_start + begin).reshape(shape)
        for name, dtype, shape, count, begin in layout
    }


@functools.lru_cache(maxsize=4096)
def _parse_header(raw: bytes, data_len: int) -> tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]:
    """Validate a header against the data length; return (name, dtype, shape, count, begin) per field.

    Pure, hence memoised: records of one store mostly share a handful of headers (same shapes),
    so the JSON parse and checks run once per distinct header, not once per read.
    """
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"not a butd record: header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict) or header.get("__metadata__") != RECORD_METADATA:
        raise DecodeError("not a butd record: header lacks the butd-record metadata")
    layout = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _check_entry(name, entry, data_len)
        layout.append((name, dtype, shape, math.prod(shape), begin, end))
    pos = 0
    for *_, begin, end in sorted(layout, key=lambda t: (t[4], t[5])):
        if begin != pos:
            raise DecodeError("not a butd record: tensor data overlaps or leaves holes")
        pos = end
    if pos != data_len:
        raise DecodeError(f"not a butd record: {data_len - pos} trailing bytes after the tensors")
    return tuple(entry[:5] for entry in layout)


def _check_entry(name: str, entry, data_len: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise DecodeError(f"field {name!r}: header entry is not an object")
    dtype = _CODES.get(entry.get("dtype"))
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype is None:
        raise DecodeError(f"field {name!r}: unsupported dtype {entry.get('dtype')!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise DecodeError(f"field {name!r}: bad shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise DecodeError(f"field {name!r}: data offsets {offsets!r} out of range")
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise DecodeError(f"field {name!r}: {offsets[1] - offsets[0]} bytes do not match shape {shape}")
    return dtype, tuple(shape), offsets[0], offsets[1]
