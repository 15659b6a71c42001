"""The one owner of a store folder while it is written (extraction, imports): lock, settings, failure log,
and the folder's removal when nothing was written.

A folder being written holds, besides what :class:`~butd.shards.writer.ShardWriter` writes (shards, index,
manifest): ``.butd.lock`` (one writer at a time, see :mod:`butd.shards.lock`), ``run.json`` (the settings of
an unfinished store: a resume with other settings is refused) and ``failures.jsonl`` (one row per image that
could not be stored: ``{"image_id", "where", "reason"}``, ``where`` being the image file or ``FILE:LINE`` of
an imported row). :func:`inspect` says what a folder already holds before any work starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from butd.errors import UserError
from butd.shards.lock import LOCK_NAME, folder_lock
from butd.shards.spec import FAILURES_NAME, MANIFEST_NAME

__all__ = ["FAILURES_NAME", "SETTINGS_NAME", "FailureLog", "StoreFolder", "differing_settings", "inspect"]

SETTINGS_NAME = "run.json"  # settings of an unfinished store, checked on resume

# keys that change where work runs, not what it computes: a resume may change them
_WHERE_IT_RUNS = {"extractor.config.device"}


class FailureLog:
    """``failures.jsonl``: append-only, one JSON row per failed image; a torn last line (killed mid-write)
    is cut off when the log is opened."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ids: set[str] = set()
        self.rows = 0
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data[: data.rfind(b"\n") + 1]
            if len(keep) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
            for line in keep.decode("utf-8").splitlines():
                if line.strip():
                    self.ids.add(json.loads(line)["image_id"])
                    self.rows += 1

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, image_id: str | None, where: str, reason: str, *, once: bool = True) -> None:
        """One row; with ``once`` an id already logged is not logged twice (a resumed extraction)."""
        if once and image_id is not None and image_id in self.ids:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"image_id": image_id, "where": where, "reason": reason}) + "\n")
        if image_id is not None:
            self.ids.add(image_id)
        self.rows += 1

    def first(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        line = next((ln for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip()), None)
        return json.loads(line) if line else None


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def differing_settings(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two settings dicts (``extractor.config.image_size``, ...)."""
    a, b = _flat(_plain(have)), _flat(_plain(want))
    missing = object()
    diff = {k for k in {*a, *b} if k not in _WHERE_IT_RUNS and a.get(k, missing) != b.get(k, missing)}
    return sorted(k for k in diff if not any(k.startswith(d + ".") for d in diff))  # a missing block: once


def _refuse(out: Path, diff: list[str], finished: bool) -> None:
    what = "finished store" if finished else "store being extracted"
    raise UserError(f"the {what} was made with other settings: {', '.join(diff)}", out,
                    "rerun with the store's settings (`butd shards info --json`) or choose a new --out", usage=True)


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and all(p.name == LOCK_NAME for p in path.iterdir()))


def inspect(out: str | Path, settings: dict[str, Any], finished_keys: tuple[str, ...] = ("extractor",)) -> str:
    """What ``out`` holds for a writer with ``settings`` (``{"extractor": {"name", "config"}, ...}``):
    "finished" (a manifest made with the same ``finished_keys`` settings), "partial" (an unfinished store of
    the same settings: resume it) or "new" (absent or empty). Anything else is refused with one line, before
    any work starts."""
    from butd.shards.manifest import read_manifest

    out = Path(out)
    name = (settings.get("extractor") or {}).get("name")
    if (out / MANIFEST_NAME).exists():
        have = {"extractor": read_manifest(out).get("extractor") or {}}
        if have["extractor"].get("name") != name:
            raise UserError(f"the store was made by extractor {have['extractor'].get('name')!r}, not {name!r}", out,
                            f"choose a new --out, or pass --extractor {have['extractor'].get('name')}", usage=True)
        keep = {"extractor": {"config": have["extractor"].get("config") or {}}}
        want = {"extractor": {"config": (settings.get("extractor") or {}).get("config") or {}}}
        diff = differing_settings(keep, want) if "extractor" in finished_keys else []
        if diff:
            _refuse(out, diff, True)
        return "finished"
    if (out / SETTINGS_NAME).exists():
        have = json.loads((out / SETTINGS_NAME).read_text(encoding="utf-8"))
        was = (have.get("extractor") or {}).get("name")
        if was != name:
            raise UserError(f"the store being extracted uses extractor {was!r}, not {name!r}", out,
                            f"choose a new --out, or pass --extractor {was}", usage=True)
        keep = {k: have.get(k) for k in settings if k != "extractor"}
        keep["extractor"] = {k: (have.get("extractor") or {}).get(k) for k in settings.get("extractor") or {}}
        diff = differing_settings(keep, settings)
        if diff:
            _refuse(out, diff, False)
        return "partial"
    if out.exists() and (not out.is_dir() or not _is_empty(out)):
        raise UserError("--out is neither empty nor a feature store", out, "choose a new or empty directory",
                        usage=True)
    return "new"


class StoreFolder:
    """``with StoreFolder(out) as folder:`` holds the folder's lock for the block; ``folder.writer(...)`` is the
    folder's :class:`ShardWriter` (resuming committed shards), ``folder.failures`` its failure log.

    On an exception the writer is suspended (the uncommitted shard removed, committed ones kept for a
    resume); a folder this block created that holds no committed shard is removed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: Any = None
        self._writer: Any = None
        self.created = False
        self.failures: FailureLog

    def __enter__(self) -> StoreFolder:
        self.created = _is_empty(self.path)
        self._lock = folder_lock(self.path, "store")
        self._lock.__enter__()
        try:
            self.failures = FailureLog(self.path / FAILURES_NAME)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def record_settings(self, settings: dict[str, Any]) -> None:
        """The store's run.json: written once (atomically); a resume with other settings is refused."""
        path, want = self.path / SETTINGS_NAME, _plain(settings)
        if path.exists():
            diff = differing_settings(json.loads(path.read_text(encoding="utf-8")), want)
            if diff:
                _refuse(self.path, diff, False)
            return
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(want, sort_keys=True, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def writer(self, kind: str, **kwargs: Any) -> Any:
        from butd.shards.writer import ShardWriter

        self._writer = ShardWriter(self.path, kind, resume=True, **kwargs)
        return self._writer

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is not None:
                if self._writer is not None:
                    self._writer.suspend()
                if self.created and not any(self.path.glob("shard-*.lmdb")):
                    shutil.rmtree(self.path, ignore_errors=True)  # nothing was written: nothing is left
        finally:
            with contextlib.suppress(OSError):
                self._lock.__exit__(None, None, None)
