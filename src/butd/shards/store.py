"""FeatureStore: read-only, lazily opened, zero-copy access to a committed feature store."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from butd.shards.codec import decode
from butd.shards.manifest import read_manifest
from butd.shards.spec import INDEX_NAME, StoreError
from butd.shards.writer import open_lmdb_file


class _Pin:
    """Exposes a span of an LMDB map to numpy while holding a reference to its environment.

    Arrays decoded from a store keep this object alive through their `.base` chain, so the map
    cannot be closed under them even if the FeatureStore itself is garbage-collected.
    """

    __slots__ = ("__array_interface__", "env")

    def __init__(self, buf: memoryview, env: lmdb.Environment) -> None:
        addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        self.__array_interface__ = {"shape": (len(buf),), "typestr": "|u1", "data": (addr, True), "version": 3}
        self.env = env


class FeatureStore:
    """A committed store: `store[image_id] -> {field: read-only np.ndarray}`.

    LMDB environments are opened on first access in each process (so a FeatureStore can be
    handed to DataLoader workers, forked or spawned); arrays are views onto the memory map.
    Call `np.array(x)` on a field if you need a writable copy.
    """

    def __init__(self, path: str | Path, *, verify: bool = False) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        for entry in [*self.manifest["shards"], self.manifest["index"]]:
            f = self.path / entry["file"]
            if not f.is_file():
                raise StoreError(f"{self.path}: {entry['file']} is listed in the manifest but missing")
            if f.stat().st_size != entry["bytes"]:
                raise StoreError(
                    f"{self.path}: {entry['file']} has {f.stat().st_size} bytes, manifest says {entry['bytes']}"
                    " (truncated or replaced; run `butd shards verify`)"
                )
        if verify:
            from butd.shards.verify import verify_store

            report = verify_store(self.path)
            if not report.ok:
                raise StoreError(f"{self.path}: verification failed: {report.problems[0]}")
        self._pid: int | None = None
        self._index: lmdb.Environment | None = None
        self._shards: list[lmdb.Environment | None] = []

    # -- metadata -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def dims(self) -> dict[str, Any]:
        return self.manifest["dims"]

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["dims"]["feature_dim"])

    def __len__(self) -> int:
        return int(self.manifest["num_records"])

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, kind={self.kind}, records={len(self)}, D={self.feature_dim})"

    # -- access -------------------------------------------------------------------------------
    def _handles(self) -> lmdb.Environment:
        if self._pid != os.getpid():  # first use in this process (or a forked/spawned worker)
            self._index = open_lmdb_file(self.path / INDEX_NAME, write=False)
            self._shards = [None] * len(self.manifest["shards"])
            self._pid = os.getpid()
        return self._index

    def _shard(self, number: int) -> lmdb.Environment:
        env = self._shards[number]
        if env is None:
            env = open_lmdb_file(self.path / self.manifest["shards"][number]["file"], write=False)
            self._shards[number] = env
        return env

    def _locate(self, key: bytes) -> int | None:
        with self._handles().begin() as txn:
            loc = txn.get(key)
        if loc is None:
            return None
        number = struct.unpack("<I", loc)[0]
        if number >= len(self._shards):
            raise StoreError(f"{self.path}: index points to shard {number}, which does not exist")
        return number

    def __getitem__(self, image_id: str) -> dict[str, np.ndarray]:
        key = str(image_id).encode("utf-8")
        number = self._locate(key)
        if number is None:
            raise KeyError(image_id)
        env = self._shard(number)
        with env.begin(buffers=True) as txn:
            buf = txn.get(key)
            if buf is None:
                raise StoreError(f"{self.path}: index places {image_id!r} in shard {number}, but it is not there")
            pinned = np.asarray(_Pin(buf, env))
        return decode(pinned)

    def get(self, image_id: str, default=None):
        try:
            return self[image_id]
        except KeyError:
            return default

    def __contains__(self, image_id: object) -> bool:
        return self._locate(str(image_id).encode("utf-8")) is not None

    def image_ids(self) -> list[str]:
        """All image ids, in byte-wise sorted order of their UTF-8 encoding."""
        with self._handles().begin() as txn:
            return [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.image_ids())

    def items(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """Sequential scan, shard by shard (faster than random access for whole-store passes)."""
        self._handles()
        for number in range(len(self._shards)):
            env = self._shard(number)
            with env.begin(buffers=True) as txn:
                for key, buf in txn.cursor():
                    yield bytes(key).decode("utf-8"), decode(np.asarray(_Pin(buf, env)))

    # -- process / lifetime -------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _index=None, _shards=[])
        return state

    def close(self) -> None:
        """Drop this process's handles; maps stay alive while arrays decoded from them exist."""
        self._pid, self._index, self._shards = None, None, []
