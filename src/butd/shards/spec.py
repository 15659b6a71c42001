"""The feature-store contract in code: constants and per-kind record schemas (see features_spec.md)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "butd-features"
SPEC_VERSION = "1.0"
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.lmdb"
FAILURES_NAME = "failures.jsonl"
SHARD_PATTERN = "shard-{:05d}.lmdb"
TMP_SUFFIX = ".tmp"

KINDS = ("region", "grid")
FEATURE_DTYPES = ("float16", "float32")
# Largest JSON header a record may carry; anything bigger is treated as corrupt or hostile.
MAX_HEADER_BYTES = 1 << 20


class StoreError(Exception):
    """Base class for every error about a feature store."""


class IncompleteStoreError(StoreError):
    """The store has no manifest: its writer never finished."""


class RecordError(StoreError):
    """A record does not follow the spec (bad shape, dtype, missing field...)."""


class DecodeError(RecordError):
    """Record bytes are not a valid butd record (corrupt, truncated, or not ours, e.g. a pickle)."""


class DuplicateKeyError(RecordError):
    """The image id was already written to this store."""


@dataclass(frozen=True)
class Field:
    """One record field: allowed dtypes and a symbolic shape (k = boxes, n = H*W, D = feature dim)."""

    name: str
    dtypes: tuple[str, ...]
    shape: tuple[str | int, ...]
    required: bool = True


_SCALAR = ("int32",)

SCHEMAS: dict[str, tuple[Field, ...]] = {
    "region": (
        Field("boxes", ("float32",), ("k", 4)),
        Field("features", FEATURE_DTYPES, ("k", "D")),
        Field("num_boxes", _SCALAR, ()),
        Field("image_w", _SCALAR, ()),
        Field("image_h", _SCALAR, ()),
        Field("objects_id", ("int64",), ("k",), required=False),
        Field("objects_conf", ("float32",), ("k",), required=False),
        Field("attrs_id", ("int64",), ("k",), required=False),
        Field("attrs_conf", ("float32",), ("k",), required=False),
        Field("cls_prob", ("float32",), ("k", "C"), required=False),
    ),
    "grid": (
        Field("features", FEATURE_DTYPES, ("n", "D")),
        Field("grid_h", _SCALAR, ()),
        Field("grid_w", _SCALAR, ()),
        Field("image_w", _SCALAR, ()),
        Field("image_h", _SCALAR, ()),
    ),
}


@functools.lru_cache(maxsize=256)
def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, memoised: numpy computes it in Python (~5 us), five times per record written or checked."""
    return dtype.name


def validate_record(kind: str, record: dict[str, np.ndarray]) -> dict[str, int]:
    """Check `record` against the schema of `kind`; return the bound symbols (k, D, n, C).

    Raises RecordError with a one-line reason naming the offending field.
    """
    if kind not in SCHEMAS:
        raise RecordError(f"unknown record kind {kind!r} (expected one of {', '.join(KINDS)})")
    schema = {f.name: f for f in SCHEMAS[kind]}
    unknown = sorted(set(record) - set(schema))
    if unknown:
        raise RecordError(f"unknown field(s) for a {kind} record: {', '.join(unknown)}")
    bound: dict[str, int] = {}
    for f in schema.values():
        if f.name not in record:
            if f.required:
                raise RecordError(f"missing required field {f.name!r}")
            continue
        arr = record[f.name]
        if not isinstance(arr, np.ndarray):
            raise RecordError(f"field {f.name!r} must be a numpy array, got {type(arr).__name__}")
        if _dtype_name(arr.dtype) not in f.dtypes:
            raise RecordError(f"field {f.name!r} has dtype {arr.dtype.name}, expected {' or '.join(f.dtypes)}")
        if arr.ndim != len(f.shape):
            raise RecordError(f"field {f.name!r} has shape {arr.shape}, expected {len(f.shape)} dims")
        for dim, sym in zip(arr.shape, f.shape, strict=True):
            if isinstance(sym, int):
                if dim != sym:
                    raise RecordError(f"field {f.name!r} has shape {arr.shape}, expected {sym} in that axis")
            elif bound.setdefault(sym, dim) != dim:
                raise RecordError(
                    f"field {f.name!r} has {dim} along {sym!r} but earlier fields have {bound[sym]}"
                )
    if kind == "region":
        if int(record["num_boxes"]) != bound["k"]:
            raise RecordError(f"num_boxes={int(record['num_boxes'])} but boxes has {bound['k']} rows")
    else:
        gh, gw = int(record["grid_h"]), int(record["grid_w"])
        if gh * gw != bound["n"]:
            raise RecordError(f"grid_h*grid_w={gh}*{gw} but features has {bound['n']} rows")
    if int(record["image_w"]) <= 0 or int(record["image_h"]) <= 0:
        raise RecordError("image_w and image_h must be positive")
    return bound


def scalar(value: int) -> np.ndarray:
    """A 0-d int32 array, the encoding of every scalar field."""
    return np.asarray(value, dtype=np.int32).reshape(())
