"""The registry's ``weights`` section: published detector checkpoints, fetched as plain files.

``butd download NAME --to DIR`` saves the checkpoint as ``DIR/<file>`` through the same verified,
resumable fetcher as feature stores, trying the entry's sources in order (``butd.shards.sources``). No
public source states a sha256 for these files, so the shipped entries need ``--trust-on-first-use``, which
prints the sha256 to pin in a registry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from butd.shards.manifest import sha256_file
from butd.shards.publish import DownloadError
from butd.shards.sources import load_registry, try_sources


def load_weights_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The shipped ``weights`` entries, with those of ``path`` (a registry JSON) added or overriding."""
    return load_registry(path, "weights")


def download_weights(name: str, to: str | Path, *, registry: str | Path | None = None, mirror: str | None = None,
                     trust_on_first_use: bool = False, allow_http: bool = False, timeout: float = 30,
                     retries: int = 5, backoff: float = 1.0, progress: bool = True,
                     log: Callable[[str], None] = print) -> tuple[Path, str, int]:
    """Fetch registry weights ``name`` into ``to/<file>``; returns (path, sha256, bytes)."""
    from butd.shards.download import _Fetcher

    entry = load_weights_registry(registry)[name]
    sha = entry.get("sha256")
    if sha is None and not trust_on_first_use:
        raise DownloadError(f"{name}: no public sha256 is known for {entry['file']}, so it cannot be verified; "
                            "pass --trust-on-first-use (prints its sha256 to pin) or pin one with --registry")
    dest = Path(to) / entry["file"]
    if dest.exists():
        digest = sha256_file(dest)
        if sha is not None and digest != sha:
            raise DownloadError(f"{dest}: exists with sha256 {digest}, expected {sha}; remove it and rerun")
        log(f"{dest}: already present, sha256 {digest}")
        return dest, digest, dest.stat().st_size
    dest.parent.mkdir(parents=True, exist_ok=True)

    def attempt(url: str) -> str:
        part = dest.with_name(dest.name + ".part")
        came_from = dest.with_name(dest.name + ".source")  # unpinned bytes of two sources never mix
        if sha is None:
            if came_from.is_file() and came_from.read_text() != url:
                part.unlink(missing_ok=True)
            came_from.write_text(url)
        f = _Fetcher(timeout=timeout, retries=retries, backoff=backoff, allow_http=allow_http)
        f.bar = tqdm(total=entry.get("size"), unit="B", unit_scale=True, unit_divisor=1024, desc=entry["file"],
                     disable=None if progress else True)
        try:
            return f.fetch_file(url, dest, entry.get("size"), sha)
        finally:
            f.bar.close()

    digest, _ = try_sources(entry["sources"], attempt, name=name, mirror=mirror, allow_http=allow_http, log=log)
    dest.with_name(dest.name + ".source").unlink(missing_ok=True)
    if sha is None:
        log(f"trust on first use: sha256 of {entry['file']} is {digest} (pin it in a registry to check it next time)")
    return dest, digest, dest.stat().st_size
