"""The registry's ``weights`` section: published detector checkpoints, fetched as plain files.

``butd download NAME --to DIR`` saves the checkpoint as ``DIR/<file>`` through the same verified,
resumable fetcher as feature stores. No public source states a sha256 for these files, so the
shipped entries need ``--trust-on-first-use``, which prints the sha256 to pin in a registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from butd.shards.manifest import sha256_file
from butd.shards.publish import _HEX64, REGISTRY_PATH, DownloadError, apply_mirror, check_url


def load_weights_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The shipped ``weights`` entries, with those of ``path`` (a registry JSON) added or overriding."""
    out: dict[str, dict[str, Any]] = {}
    for p in [REGISTRY_PATH, *([Path(path)] if path else [])]:
        try:
            reg = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DownloadError(f"{p}: unreadable registry ({exc})") from None
        for name, e in (reg.get("weights") or {}).items() if isinstance(reg, dict) else ():
            if not isinstance(e, dict) or not isinstance(e.get("url"), str) or not isinstance(e.get("file"), str) \
                    or "/" in e["file"] or e["file"].startswith("."):
                raise DownloadError(f"{p}: weights {name!r} need 'url' and a plain 'file' name")
            if e.get("sha256") is not None and not _HEX64.match(str(e["sha256"])):
                raise DownloadError(f"{p}: weights {name!r} have a malformed sha256 {e['sha256']!r}")
            out[name] = e
    return out


def download_weights(name: str, to: str | Path, *, registry: str | Path | None = None, mirror: str | None = None,
                     trust_on_first_use: bool = False, allow_http: bool = False, timeout: float = 30,
                     retries: int = 5, backoff: float = 1.0, progress: bool = True,
                     log: Callable[[str], None] = print) -> tuple[Path, str, int]:
    """Fetch registry weights ``name`` into ``to/<file>``; returns (path, sha256, bytes)."""
    from butd.shards.download import _Fetcher

    entry = load_weights_registry(registry)[name]
    url = apply_mirror(entry["url"], mirror)
    check_url(url, allow_http)
    sha = entry.get("sha256")
    if sha is None and not trust_on_first_use:
        raise DownloadError(f"{url}: no public sha256 is known for {entry['file']}, so it cannot be verified; "
                            "pass --trust-on-first-use (prints its sha256 to pin) or pin one with --registry")
    dest = Path(to) / entry["file"]
    if dest.exists():
        digest = sha256_file(dest)
        if sha is not None and digest != sha:
            raise DownloadError(f"{dest}: exists with sha256 {digest}, expected {sha}; remove it and rerun")
        log(f"{dest}: already present, sha256 {digest}")
        return dest, digest, dest.stat().st_size
    dest.parent.mkdir(parents=True, exist_ok=True)
    f = _Fetcher(timeout=timeout, retries=retries, backoff=backoff, allow_http=allow_http)
    f.bar = tqdm(total=entry.get("size"), unit="B", unit_scale=True, unit_divisor=1024, desc=entry["file"],
                 disable=None if progress else True)
    try:
        digest = f.fetch_file(url, dest, entry.get("size"), sha)
    finally:
        f.bar.close()
    if sha is None:
        log(f"trust on first use: sha256 of {entry['file']} is {digest} (pin it in a registry to check it next time)")
    return dest, digest, dest.stat().st_size
