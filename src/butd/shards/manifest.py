"""manifest.json: reading, writing (atomically, last) and hashing helpers."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from butd.shards.spec import (
    FORMAT_NAME,
    KINDS,
    MANIFEST_NAME,
    SPEC_VERSION,
    IncompleteStoreError,
    StoreError,
)

_HASH_CHUNK = 8 << 20


def sha256_file(path: str | Path, progress=None) -> str:
    """Streamed sha256 of a file; `progress(nbytes)` is called per chunk if given."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return h.hexdigest()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp name, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no temp file
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def creation_info() -> dict[str, Any]:
    from butd import __version__

    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "butd_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else [],
    }


def read_manifest(store: str | Path) -> dict[str, Any]:
    """Load and sanity-check `store/manifest.json`; raise IncompleteStoreError if it is absent."""
    store = Path(store)
    if not store.is_dir():
        raise StoreError(f"{store}: not a directory")
    path = store / MANIFEST_NAME
    if not path.exists():
        raise IncompleteStoreError(
            f"{store}: no {MANIFEST_NAME}, so the store is incomplete "
            "(its writer did not finish; rerun the writer or remove the directory)"
        )
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a {FORMAT_NAME} manifest")
    major = str(m.get("spec_version", "")).split(".")[0]
    if major != SPEC_VERSION.split(".")[0]:
        raise StoreError(f"{path}: spec version {m.get('spec_version')!r} is not supported (we read {SPEC_VERSION})")
    if m.get("kind") not in KINDS:
        raise StoreError(f"{path}: unknown kind {m.get('kind')!r}")
    for key in ("shards", "index", "num_records", "dims"):
        if key not in m:
            raise StoreError(f"{path}: missing {key!r}")
    if not isinstance(m["shards"], list) or not isinstance(m["index"], dict):
        raise StoreError(f"{path}: 'shards' must be a list and 'index' an object")
    for entry in [*m["shards"], m["index"]]:
        if not isinstance(entry, dict):
            raise StoreError(f"{path}: file entries must be objects")
        name = entry.get("file", "")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise StoreError(f"{path}: bad file name {name!r} (must be a plain name inside the store)")
        if not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("records"), int):
            raise StoreError(f"{path}: entry for {name} lacks an integer 'bytes'/'records' or a 'sha256'")
    return m


def extractor_weights(extractor: dict[str, Any] | None) -> str | None:
    """The manifest's ``extractor.weights`` in words ("random", "shipped", "imagenet", a file name), also for
    stores written before that key (no sha256 there meant random initialisation); None for imports."""
    ext = extractor or {}
    if ext.get("weights"):
        return str(ext["weights"])
    config = ext.get("config")
    if not isinstance(config, dict) or "weights" not in config:  # imports, the toy oracle: no weights at all
        return None
    if ext.get("weights_sha256") is None:
        return "random"
    return str(config["weights"] or "shipped")
