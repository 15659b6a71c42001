"""ShardWriter: append records to a store, rolling LMDB shards, committing each one atomically.

Life of a store directory:
  1. `shard-NNNNN.lmdb.tmp` is filled, synced, then renamed to `shard-NNNNN.lmdb` (committed).
  2. close(): `index.lmdb` (image id -> shard number) is built from the committed shards the same way.
  3. `manifest.json` is written last, atomically. No manifest means "incomplete" to every reader.
A crash leaves only committed shards and at most one `.tmp`; `resume=True` picks up from there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import weakref
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from butd.shards.codec import encode
from butd.shards.diskio import lmdb_io as _lmdb_io
from butd.shards.manifest import creation_info, fsync_dir, sha256_file, write_json_atomic
from butd.shards.spec import (
    FORMAT_NAME,
    INDEX_NAME,
    MANIFEST_NAME,
    SHARD_PATTERN,
    SPEC_VERSION,
    TMP_SUFFIX,
    DuplicateKeyError,
    RecordError,
    StoreError,
    validate_record,
)

# Virtual address space only: without MDB_WRITEMAP LMDB grows the file as pages are used.
_MAP_SIZE = 1 << 40 if struct.calcsize("P") == 8 else 1 << 30
# Commit the write transaction this often inside a shard, bounding LMDB's dirty-page memory.
_TXN_BYTES = 64 << 20


# LMDB forbids opening one file twice in a process, so read-only environments are shared per
# (device, inode) and live while anything (a store, a decoded array) references them. A forked
# child (DataLoader worker) inherits and reuses them: that is safe here because they are opened
# read-only with lock=False, so no lock file or reader table is shared across the fork, only the
# read-only mapping and file descriptor.
_READERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def open_lmdb_file(path: Path, *, write: bool) -> lmdb.Environment:
    """Open a single-file LMDB environment (no lock file; stores have one writer, many readers).

    Read-only environments come from a per-process cache and must never be closed explicitly:
    arrays decoded from them point into their memory map.
    """
    if write:
        return lmdb.open(str(path), subdir=False, map_size=_MAP_SIZE, lock=False, meminit=False,
                         sync=False, metasync=False, readahead=False)
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    env = _READERS.get(key)
    if env is None:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, max_readers=1024)
        _READERS[key] = env
    return env


class ShardWriter:
    """Write records of one kind ("region" or "grid") into a new store at `path`.

    Use as a context manager: a clean exit finalises the store (index + manifest), an exception
    aborts it and removes what this writer created.
    """

    def __init__(
        self,
        path: str | Path,
        kind: str,
        *,
        max_records: int = 1000,
        max_bytes: int = 1 << 30,
        extractor: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        if kind not in ("region", "grid"):
            raise StoreError(f"unknown store kind {kind!r}")
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be positive")
        self.path = Path(path)
        self.kind = kind
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.extractor = extractor or {}
        self.source = source or {}
        self._created_dir = not self.path.exists()
        self._seen: set[str] = set()
        self._shards: list[dict[str, Any]] = []
        self._dims: dict[str, Any] | None = None
        self._env: lmdb.Environment | None = None
        self._txn: lmdb.Transaction | None = None
        self._cur_records = 0
        self._cur_bytes = 0
        self._txn_bytes = 0
        self._closed = False
        self._prepare_dir(resume)
        self._n_adopted = len(self._shards)

    # -- set-up -------------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / MANIFEST_NAME).exists():
            raise StoreError(f"{self.path}: already holds a complete store (manifest.json); choose a new path")
        committed = sorted(self.path.glob("shard-*.lmdb"))
        if committed and not resume:
            raise StoreError(f"{self.path}: holds shards of an unfinished store; resume it or remove the directory")
        for tmp in self.path.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink()  # half-written leftovers of a crash are never trusted
        for i, shard in enumerate(committed):
            if shard.name != SHARD_PATTERN.format(i):
                raise StoreError(f"{self.path}: shard files are not numbered contiguously at {shard.name}")
            self._adopt_shard(shard)

    def _adopt_shard(self, shard: Path) -> None:
        """Take over a shard committed by an earlier, interrupted writer (resume)."""
        from butd.shards.codec import decode

        env = open_lmdb_file(shard, write=False)
        with env.begin(buffers=True) as txn:  # views on the map: only headers are read, no value is copied
            n = 0
            for key, value in txn.cursor():
                record = decode(value)
                self._seen.add(bytes(key).decode("utf-8"))
                self._update_dims(validate_record(self.kind, record), record)
                n += 1
        del env
        self._shards.append({"file": shard.name, "records": n, "bytes": shard.stat().st_size})

    # -- public API ---------------------------------------------------------------------------
    def __contains__(self, image_id: str) -> bool:
        return image_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    @_lmdb_io
    def add(self, image_id: str, record: dict[str, np.ndarray]) -> None:
        """Validate, encode and store one record. Raises RecordError/DuplicateKeyError, storing nothing."""
        if self._closed:
            raise StoreError("writer is closed")
        if not isinstance(image_id, str) or not image_id:
            raise RecordError(f"image id must be a non-empty string, got {image_id!r}")
        key = image_id.encode("utf-8")
        if len(key) > 511:
            raise RecordError(f"image id is {len(key)} bytes; LMDB keys are limited to 511")
        if image_id in self._seen:
            raise DuplicateKeyError(f"duplicate image id {image_id!r}")
        bound = validate_record(self.kind, record)
        self._check_dims(bound, record)
        value = encode(record)
        if self._env is not None and (
            self._cur_records >= self.max_records or self._cur_bytes + len(value) > self.max_bytes
        ):
            self._commit_shard()
        if self._env is None:
            self._open_shard()
        self._txn.put(key, value, overwrite=False)
        self._seen.add(image_id)
        self._update_dims(bound, record)
        self._cur_records += 1
        self._cur_bytes += len(value)
        self._txn_bytes += len(value)
        if self._txn_bytes >= _TXN_BYTES:
            self._txn.commit()
            self._txn = self._env.begin(write=True)
            self._txn_bytes = 0

    @_lmdb_io
    def close(self) -> dict[str, Any]:
        """Commit the last shard, build the index, hash everything, write the manifest (last)."""
        if self._closed:
            raise StoreError("writer is already closed")
        if self._env is not None:
            self._commit_shard()
        if self._dims is None:
            self.abort()
            raise StoreError(f"{self.path}: no records were written; refusing to create an empty store")
        index_entry = self._build_index()
        for s in self._shards:
            if "sha256" not in s:  # shards adopted on resume
                s["sha256"] = sha256_file(self.path / s["file"])
        manifest = {
            "format": FORMAT_NAME,
            "spec_version": SPEC_VERSION,
            "kind": self.kind,
            "num_records": len(self._seen),
            "dims": self._dims_for_manifest(),
            "records_per_shard": self.max_records,
            "shards": self._shards,
            "index": index_entry,
            "extractor": self.extractor,
            "source": self.source,
            "created": creation_info(),
        }
        write_json_atomic(self.path / MANIFEST_NAME, manifest)
        self._closed = True
        return manifest

    def suspend(self) -> None:
        """Stop after a failure, keeping every committed shard for a resume: the shard being filled (and any
        temporary index) is removed, so nothing half-written is left."""
        if self._env is not None:
            with contextlib.suppress(lmdb.Error):
                self._txn.abort()
            with contextlib.suppress(lmdb.Error):
                self._env.close()
            self._env = self._txn = None
        self._closed = True
        for tmp in self.path.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Remove everything this writer created (the whole directory if it made it)."""
        if self._env is not None:
            self._txn.abort()
            self._env.close()
            self._env = None
        self._closed = True
        if self._created_dir:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # keep shards adopted from an earlier run: they were committed and stay valid
            adopted = {s["file"] for s in self._shards[: self._n_adopted]}
            for p in self.path.glob("shard-*"):
                if p.name not in adopted:
                    p.unlink()
            (self.path / INDEX_NAME).unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ----------------------------------------------------------------------------
    def _check_dims(self, bound: dict[str, int], record: dict[str, np.ndarray]) -> None:
        if self._dims is None:
            return
        d = self._dims
        if bound["D"] != d["feature_dim"]:
            raise RecordError(f"features have width {bound['D']}, but this store's width is {d['feature_dim']}")
        if record["features"].dtype.name != d["feature_dtype"]:
            raise RecordError(f"features are {record['features'].dtype.name}, store is {d['feature_dtype']}")
        if sorted(record) != d["fields"]:
            raise RecordError(f"fields {sorted(record)} differ from the store's {d['fields']}")
        if "C" in bound and bound["C"] != d.get("num_classes"):
            raise RecordError(f"cls_prob has {bound['C']} classes, store has {d.get('num_classes')}")

    def _update_dims(self, bound: dict[str, int], record: dict[str, np.ndarray]) -> None:
        n = bound.get("k", bound.get("n"))
        if self._dims is None:
            self._dims = {
                "feature_dim": bound["D"],
                "feature_dtype": record["features"].dtype.name,
                "fields": sorted(record),
                "min_rows": n,
                "max_rows": n,
            }
            if "C" in bound:
                self._dims["num_classes"] = bound["C"]
        else:
            self._dims["min_rows"] = min(self._dims["min_rows"], n)
            self._dims["max_rows"] = max(self._dims["max_rows"], n)
        if self.kind == "grid":
            hw = [int(record["grid_h"]), int(record["grid_w"])]
            if self._dims.setdefault("grid", hw) != hw:
                self._dims["grid"] = "variable"

    def _dims_for_manifest(self) -> dict[str, Any]:
        d = dict(self._dims)
        if self.kind == "region":
            d["min_boxes"], d["max_boxes"] = d.pop("min_rows"), d.pop("max_rows")
        else:
            d.pop("min_rows"), d.pop("max_rows")
        return d

    def _open_shard(self) -> None:
        name = SHARD_PATTERN.format(len(self._shards))
        self._tmp_path = self.path / (name + TMP_SUFFIX)
        self._env = open_lmdb_file(self._tmp_path, write=True)
        self._txn = self._env.begin(write=True)
        self._cur_records = self._cur_bytes = self._txn_bytes = 0

    def _commit_shard(self) -> None:
        self._txn.commit()
        self._env.sync(True)
        self._env.close()
        self._env = self._txn = None
        final = self._tmp_path.with_name(self._tmp_path.name[: -len(TMP_SUFFIX)])
        os.replace(self._tmp_path, final)
        fsync_dir(self.path)
        self._shards.append({
            "file": final.name,
            "records": self._cur_records,
            "bytes": final.stat().st_size,
            "sha256": sha256_file(final),
        })

    def _build_index(self) -> dict[str, Any]:
        tmp = self.path / (INDEX_NAME + TMP_SUFFIX)
        tmp.unlink(missing_ok=True)
        out = open_lmdb_file(tmp, write=True)
        try:
            with out.begin(write=True) as wtxn:
                for number, s in enumerate(self._shards):
                    env = open_lmdb_file(self.path / s["file"], write=False)
                    with env.begin() as rtxn:
                        for key in rtxn.cursor().iternext(keys=True, values=False):
                            wtxn.put(key, struct.pack("<I", number), overwrite=False)
                    del env
            out.sync(True)
        finally:
            out.close()
        final = self.path / INDEX_NAME
        os.replace(tmp, final)
        fsync_dir(self.path)
        return {"file": INDEX_NAME, "records": len(self._seen), "bytes": final.stat().st_size,
                "sha256": sha256_file(final)}
