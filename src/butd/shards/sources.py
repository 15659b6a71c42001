"""Where a registry entry can be fetched from: every known public location, with where it was announced and
its reported status, tried in order until one serves the file.

A registry entry lists ``sources`` (or, the short form, one ``url``): each ``{"url", "status", "announced",
"reported", "note"}``. ``status`` is what the public record says, with the link that says it:

* ``unknown``: nobody has reported it either way (tried);
* ``alive``: reported working (``reported`` links the report; tried);
* ``dead``: reported dead (``reported`` links the report; still tried, last resort: hosts come back);
* ``manual``: a share page a person has to open (Google Drive folder, Baidu Netdisk...): listed, never fetched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from butd.shards.publish import _HEX64, REGISTRY_PATH, DownloadError, apply_mirror, check_url

STATUSES = ("unknown", "alive", "dead", "manual")
_ORDER = {"alive": 0, "unknown": 1, "dead": 2}
T = TypeVar("T")

__all__ = ["STATUSES", "fetch_order", "load_registry", "parse_sources", "source_lines", "try_sources"]


def load_registry(path: str | Path | None = None, section: str = "datasets") -> dict[str, dict[str, Any]]:
    """The shipped registry's ``section`` (``datasets`` or ``weights``), with the entries of ``path`` (a registry
    JSON file) added or overriding. Every entry gets a checked ``sources`` list (see :func:`parse_sources`)."""
    out: dict[str, dict[str, Any]] = {}
    for p in [REGISTRY_PATH, *([Path(path)] if path else [])]:
        try:
            reg = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DownloadError(f"{p}: unreadable registry ({exc})") from None
        if not isinstance(reg, dict) or reg.get("version") != 1 or not isinstance(reg.get("datasets", {}), dict):
            raise DownloadError(f"{p}: not a version-1 registry ({{'version': 1, 'datasets': {{...}}}})")
        for name, entry in (reg.get(section) or {}).items():
            if not isinstance(entry, dict):
                raise DownloadError(f"{p}: {name!r} must be an object")
            if section == "datasets" and "format" not in entry:
                raise DownloadError(f"{p}: dataset {name!r} needs 'url' (or 'sources') and 'format'")
            if section == "weights" and (not isinstance(entry.get("file"), str) or "/" in entry["file"]
                                         or entry["file"].startswith(".")):
                raise DownloadError(f"{p}: weights {name!r} need 'url' and a plain 'file' name")
            sha = entry.get("sha256")
            if sha is not None and not _HEX64.match(str(sha)):
                raise DownloadError(f"{p}: {name!r} has a malformed sha256 {sha!r}")
            sources = parse_sources(name, entry, p)
            out[name] = {**entry, "sources": sources, "url": sources[0]["url"]}
    return out


def parse_sources(name: str, entry: dict[str, Any], where: object) -> list[dict[str, Any]]:
    """The entry's sources as dicts (``url`` alone, and legacy ``mirrors``, become sources of unknown status)."""
    raw = entry.get("sources")
    if raw is None:
        urls = [entry.get("url"), *(entry.get("mirrors") or [])]
        raw = [{"url": u} for u in urls if u is not None]
    if not isinstance(raw, list) or not raw:
        raise DownloadError(f"{where}: {name!r} needs 'url' or a non-empty 'sources' list")
    out = []
    for s in raw:
        if not isinstance(s, dict) or not isinstance(s.get("url"), str):
            raise DownloadError(f"{where}: every source of {name!r} needs a 'url'")
        status = s.get("status", "unknown")
        if status not in STATUSES:
            raise DownloadError(f"{where}: {name!r} source {s['url']} has status {status!r} "
                                f"(one of {', '.join(STATUSES)})")
        if status in ("alive", "dead") and not s.get("reported"):
            raise DownloadError(f"{where}: {name!r} source {s['url']} is {status} without a 'reported' link")
        out.append({**s, "status": status})
    return out


def fetch_order(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sources butd tries: reported alive first, then unknown, then reported dead; never manual ones.
    The registry's order is kept within each group."""
    return sorted((s for s in sources if s["status"] != "manual"), key=lambda s: _ORDER[s["status"]])


def _status(s: dict[str, Any]) -> str:
    if s["status"] == "manual":
        text = "a page to open by hand, not fetched by butd" + (f": {s['note']}" if s.get("note") else "")
        return text + (f" (reported: {s['reported']})" if s.get("reported") else "")
    if s["status"] == "unknown":
        return "unknown" + (f" (see {s['reported']})" if s.get("reported") else "")
    return f"reported {s['status']}: {s['reported']}"


def source_lines(sources: list[dict[str, Any]]) -> list[str]:
    """``butd download --list``: each source with its status (and the report) and where it was announced."""
    lines = []
    for i, s in enumerate(sources, 1):
        lines += [f"  {i}. {s['url']}", f"     status: {_status(s)}"]
        if s.get("announced"):
            lines.append(f"     announced: {s['announced']}")
    return lines


def try_sources(sources: list[dict[str, Any]], attempt: Callable[[str], T], *, name: str, mirror: str | None,
                allow_http: bool, log: Callable[[str], None]) -> tuple[T, str]:
    """Call ``attempt(url)`` for each fetchable source in :func:`fetch_order` until one succeeds; returns its
    result and the URL that served. A failing source is logged with the reason; if all fail, one
    DownloadError names every source and why."""
    order = fetch_order(sources)
    manual = [s for s in sources if s["status"] == "manual"]
    failures = []
    seen: set[str] = set()
    for i, s in enumerate(order, 1):
        url = apply_mirror(s["url"], mirror)
        if url in seen:  # --mirror can map two hosts onto one URL
            continue
        seen.add(url)
        known = f" (reported dead: {s['reported']})" if s["status"] == "dead" else ""
        try:
            check_url(url, allow_http)
            result = attempt(url)
        except DownloadError as exc:
            if len(order) == 1 and not manual:  # one location: its own error is the clearest
                raise
            reason = str(exc).replace(f"{url}: ", "")
            failures.append(f"{i}. {url}: {reason}{known}")
            if i < len(order):
                log(f"source {i}/{len(order)} of {name} failed: {url}: {reason}{known}; trying the next")
            continue
        if len(order) > 1:
            log(f"{name}: served by source {i}/{len(order)}, {url}")
        return result, url
    by_hand = f"; to open by hand: {', '.join(s['url'] for s in manual)}" if manual else ""
    raise DownloadError(f"{name}: no source served it ({'; '.join(failures) or 'none can be fetched'}){by_hand}; "
                        "pass --mirror BASE or --registry FILE with a working location")
