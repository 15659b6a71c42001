"""Publish a store as a distribution unit, and address publications (registry, mirrors, URL policy).

A published directory is the store as is plus a small `index.json` naming it; any static HTTP(S)
server can serve it, and its base URL is what `butd download` takes. Nothing is converted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

from butd.shards.manifest import fsync_dir
from butd.shards.spec import FORMAT_NAME, MANIFEST_NAME, SPEC_VERSION, StoreError
from butd.shards.verify import verify_store

PUBLICATION_INDEX = "index.json"
PUBLICATION_FORMAT = "butd-features-publication"
REGISTRY_PATH = Path(__file__).with_name("registry.json")
_CHUNK = 8 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_MAJOR = SPEC_VERSION.split(".")[0]


class DownloadError(StoreError):
    """A download failed for good (after retries, or for a reason retrying cannot fix)."""


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp name, fsync, then rename over `path` (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _copy_checked(src: Path, dst: Path, sha256: str, bar: tqdm) -> None:
    """Copy `src` to `dst` through a temp name, hashing what is read; refuse if it differs from `sha256`."""
    tmp = dst.with_name(dst.name + ".tmp")
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            bar.update(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
    if h.hexdigest() != sha256:
        tmp.unlink()
        raise StoreError(f"{src}: changed while being published (sha256 no longer matches the manifest)")
    os.replace(tmp, dst)


def publish_store(
    store: str | Path, outdir: str | Path, *, name: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Verify `store`, copy it into the empty/new directory `outdir`, and write `outdir/index.json`.

    The manifest is copied after every shard and the index, and `index.json` is written last, so
    a half-published directory never looks complete. Returns the content of `index.json`.
    Raises StoreError if the store fails verification or `outdir` is not empty.
    """
    store, outdir = Path(store), Path(outdir)
    report = verify_store(store, progress=progress)
    if not report.ok:
        shown = "; ".join(report.problems[:3]) + (" …" if len(report.problems) > 3 else "")
        raise StoreError(f"{store}: refusing to publish, verification failed ({len(report.problems)} "
                         f"problem(s)): {shown}")
    raw = (store / MANIFEST_NAME).read_bytes()
    manifest = json.loads(raw.decode("utf-8"))
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise StoreError(f"{outdir}: exists and is not an empty directory; publish into a new one")
    if outdir.resolve() == store.resolve():
        raise StoreError(f"{outdir}: is the store itself; publish into a new directory")
    outdir.mkdir(parents=True, exist_ok=True)
    entries = [*manifest["shards"], manifest["index"]]
    total = sum(int(e["bytes"]) for e in entries)
    disable = None if progress else True  # None: auto (off when stderr is not a terminal)
    with tqdm(total=total, unit="B", unit_scale=True, desc="publishing", disable=disable) as bar:
        for e in entries:
            _copy_checked(store / e["file"], outdir / e["file"], e["sha256"], bar)
    fsync_dir(outdir)
    write_bytes_atomic(outdir / MANIFEST_NAME, raw)
    index = {
        "format": PUBLICATION_FORMAT,
        "version": 1,
        "name": name or store.resolve().name,
        "kind": manifest["kind"],
        "num_records": manifest["num_records"],
        "dims": manifest["dims"],
        "files": len(entries) + 1,
        "total_bytes": total + len(raw),
        "manifest": MANIFEST_NAME,
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "published": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_bytes_atomic(outdir / PUBLICATION_INDEX, (json.dumps(index, indent=2) + "\n").encode("utf-8"))
    return index


def parse_published_manifest(raw: bytes, url: str) -> dict[str, Any]:
    """Check a fetched manifest enough to use its file list safely (names become local paths)."""
    try:
        m = json.loads(raw.decode("utf-8"))
        entries = [*m["shards"], m["index"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise DownloadError(f"{url}: not a {FORMAT_NAME} store manifest") from None
    if m.get("format") != FORMAT_NAME or str(m.get("spec_version", "")).split(".")[0] != _MAJOR:
        raise DownloadError(f"{url}: not a {FORMAT_NAME} v{_MAJOR} manifest")
    seen: set[str] = set()
    for e in entries:
        name = e.get("file") if isinstance(e, dict) else None
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name == MANIFEST_NAME \
                or name.endswith((".part", ".tmp")) or name in seen:
            raise DownloadError(f"{url}: manifest lists a bad or duplicate file name {name!r}")
        if not isinstance(e.get("bytes"), int) or e["bytes"] < 0 or not _HEX64.match(str(e.get("sha256"))):
            raise DownloadError(f"{url}: manifest entry {name!r} lacks a valid size or sha256")
        seen.add(name)
    return m


def registry_entry(index: dict[str, Any], url: str = "https://HOST/PATH") -> dict[str, Any]:
    """The registry record that pins a publication (`url` is where `outdir` will be served)."""
    return {
        "url": url,
        "format": "store",
        "size": index["total_bytes"],
        "sha256": index["manifest_sha256"],
        "description": f"{index['name']}: {index['kind']} features, {index['num_records']} images, "
                       f"D={index['dims'].get('feature_dim')}",
    }


# -- where publications live: registry, mirrors, URL policy -----------------------------------
def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_failure(exc: BaseException) -> str:
    """A transient network failure in a few words ("timed out", "ConnectionResetError: ...")."""
    timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
    return "timed out" if timed_out else f"{type(exc).__name__}: {exc}".rstrip(": ")


def check_url(url: str, allow_http: bool) -> None:
    """Refuse anything but https (http only with allow_http, or to a loopback host). No network use."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and (allow_http or is_loopback(parts.hostname))):
        if not parts.hostname:
            raise DownloadError(f"{url}: no host in URL")
        return
    if parts.scheme == "http":
        raise DownloadError(f"{url}: plain http is refused (unauthenticated); use https or pass --allow-http")
    raise DownloadError(f"{url}: unsupported URL scheme {parts.scheme!r} (use https)")


def apply_mirror(url: str, mirror: str | None) -> str:
    """Replace scheme and host of `url` by the mirror's, prefixing the mirror's path (if any)."""
    if not mirror:
        return url
    u, m = urlsplit(url), urlsplit(mirror)
    if not m.scheme or not m.netloc:
        raise DownloadError(f"--mirror {mirror!r}: expected a base URL like https://host[/prefix]")
    return urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))


def load_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The shipped registry, with the datasets of `path` (a registry JSON file) added or overriding."""
    datasets: dict[str, dict[str, Any]] = {}
    for p in [REGISTRY_PATH, *([Path(path)] if path else [])]:
        try:
            reg = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DownloadError(f"{p}: unreadable registry ({exc})") from None
        if not isinstance(reg, dict) or reg.get("version") != 1 or not isinstance(reg.get("datasets"), dict):
            raise DownloadError(f"{p}: not a version-1 registry ({{'version': 1, 'datasets': {{...}}}})")
        for name, entry in reg["datasets"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or "format" not in entry:
                raise DownloadError(f"{p}: dataset {name!r} needs at least 'url' and 'format'")
            sha = entry.get("sha256")
            if sha is not None and not _HEX64.match(str(sha)):
                raise DownloadError(f"{p}: dataset {name!r} has a malformed sha256 {sha!r}")
            datasets[name] = entry
    return datasets
