"""Download a published store, or a legacy feature archive, verified, resumable and in parallel.

Every file is fetched to `<name>.part` (resumed with HTTP Range requests after a drop), checked
against its sha256, then renamed. A store's manifest is written into the target directory last,
after every file it lists is verified, and `verify_store` runs at the end.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from butd import __version__
from butd.shards.importers import IMPORT_FORMATS
from butd.shards.manifest import sha256_file
from butd.shards.publish import (
    DownloadError,
    apply_mirror,
    check_url,
    describe_failure,
    is_loopback,
    load_registry,
    parse_published_manifest,
    write_bytes_atomic,
)
from butd.shards.spec import FORMAT_NAME, MANIFEST_NAME
from butd.shards.verify import VerifyReport, verify_store

STORE_FORMATS = ("store", FORMAT_NAME)
ARCHIVE_SUFFIXES = (".zip", ".tsv", ".h5", ".hdf5", ".npz", ".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20
_MAX_MANIFEST = 64 << 20


class _Transient(Exception):
    """A failure worth retrying: connection drop, timeout, 5xx, short body."""


class _Stopped(Exception):
    """Another file failed; this one stops (its `.part` is kept for a later resume)."""


@dataclass
class DownloadResult:
    """What `download` fetched, where it is, and the verification report of the result."""

    path: Path
    url: str
    kind: str  # "store" or "archive"
    files: int
    bytes: int
    sha256: str  # of the manifest (store) or of the archive
    report: VerifyReport


# -- HTTP ---------------------------------------------------------------------------------------
class _Redirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        check_url(newurl, self.allow_http)  # no silent downgrade from https to http
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Fetcher:
    """HTTP(S) GETs with timeouts, retries with exponential backoff, and Range resume."""

    def __init__(self, *, timeout: float, retries: int, backoff: float, allow_http: bool) -> None:
        self.timeout, self.retries, self.backoff, self.allow_http = timeout, retries, backoff, allow_http
        self.bar: tqdm | None = None
        self.stop = threading.Event()
        self._proxied = urllib.request.build_opener(_Redirects(allow_http))
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Redirects(allow_http))

    def _open(self, url: str, offset: int = 0):
        check_url(url, self.allow_http)
        headers = {"User-Agent": f"butd/{__version__}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        opener = self._direct if is_loopback(urlsplit(url).hostname) else self._proxied
        try:
            return opener.open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                return exc  # the caller decides (complete file, or restart)
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                raise DownloadError(f"{url}: TLS error ({exc.reason})") from None
            raise _Transient(f"connection failed ({exc.reason})") from None
        except (TimeoutError, OSError, HTTPException) as exc:
            raise _Transient(describe_failure(exc)) from None

    def _retry(self, url: str, attempt: Callable[[], Any], progressed: Callable[[], bool]) -> Any:
        failures = 0
        while True:
            if self.stop.is_set():
                raise _Stopped()
            try:
                return attempt()
            except _Transient as exc:
                failures = 1 if progressed() else failures + 1
                if failures > self.retries:
                    raise DownloadError(f"{url}: giving up after {self.retries} retries: {exc}") from None
                delay = min(self.backoff * 2 ** (failures - 1), 60.0) * random.uniform(1.0, 1.25)
                if self.stop.wait(delay):
                    raise _Stopped() from None

    def get_bytes(self, url: str) -> bytes:
        """A small whole-body GET (the manifest), retried."""
        def attempt() -> bytes:
            with self._open(url) as resp:
                try:
                    data = resp.read(_MAX_MANIFEST + 1)
                except (TimeoutError, OSError, HTTPException) as exc:
                    raise _Transient(describe_failure(exc)) from None
                length = resp.headers.get("Content-Length")
            if len(data) > _MAX_MANIFEST:
                raise DownloadError(f"{url}: larger than {_MAX_MANIFEST} bytes; not a manifest")
            if length is not None and length.isdigit() and len(data) != int(length):
                raise _Transient(f"connection closed after {len(data)} of {length} bytes")
            return data
        return self._retry(url, attempt, lambda: False)

    def fetch_file(self, url: str, dest: Path, size: int | None, sha256: str | None) -> str:
        """Download `url` to `dest` via `dest.part` (resumed if present); verify; return its sha256."""
        part = dest.with_name(dest.name + ".part")
        st: dict[str, Any] = {"h": hashlib.sha256(), "hashed": 0, "counted": 0, "before": 0}

        def sync_state() -> int:
            offset = part.stat().st_size if part.exists() else 0
            if size is not None and offset > size:
                part.unlink()
                offset = 0
            if st["hashed"] != offset:  # a .part from an earlier run: hash what it holds
                st["h"], st["hashed"] = hashlib.sha256(), offset
                with open(part, "ab+") as fh:
                    fh.seek(0)
                    while chunk := fh.read(8 << 20):
                        st["h"].update(chunk)
            self._count(st, offset - st["counted"])
            st["before"] = offset
            return offset

        def attempt() -> None:
            offset = sync_state()
            if size is not None and offset == size:
                return part.touch()
            resp = self._open(url, offset)
            with resp:
                if resp.status == 416:  # offset at or past the end: done if it is the end, else restart
                    if size is None and resp.headers.get("Content-Range", "").endswith(f"/{offset}"):
                        return
                    self._restart(part, st)
                    raise _Transient("server refused the Range request; starting over")
                if resp.status == 206:
                    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        self._restart(part, st)
                        raise _Transient("server answered a different range; starting over")
                    total = int(m.group(2)) if m.group(2) != "*" else None
                else:
                    if offset:  # server ignored Range: it sends the whole file
                        self._restart(part, st)
                        offset = 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if size is not None and total is not None and total != size:
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{url}: server has {total} bytes, expected {size}")
                self._stream(resp, part, st, offset, size if size is not None else total, url)

        self._retry(url, attempt, lambda: (part.stat().st_size if part.exists() else 0) > st["before"])
        digest, got = st["h"].hexdigest(), part.stat().st_size
        if (size is not None and got != size) or (sha256 is not None and digest != sha256):
            part.unlink()
            what = f"{got} bytes, expected {size}" if size is not None and got != size else \
                f"sha256 {digest} does not match the expected {sha256}"
            raise DownloadError(f"{dest.name}: corrupt download from {url} ({what}); deleted it, rerun")
        part.replace(dest)
        return digest

    def _stream(self, resp, part: Path, st: dict[str, Any], offset: int, total: int | None, url: str) -> None:
        with open(part, "ab" if offset else "wb") as f:
            while True:
                if self.stop.is_set():
                    raise _Stopped()
                try:
                    chunk = resp.read(_CHUNK)
                except (TimeoutError, OSError, HTTPException) as exc:
                    raise _Transient(describe_failure(exc)) from None
                if not chunk:
                    break
                if total is not None and offset + len(chunk) > total:
                    raise DownloadError(f"{url}: server sent more than the {total} bytes announced")
                f.write(chunk)
                st["h"].update(chunk)
                offset += len(chunk)
                st["hashed"] = offset
                self._count(st, len(chunk))
        if total is not None and offset < total:
            raise _Transient(f"connection closed after {offset} of {total} bytes")

    def _restart(self, part: Path, st: dict[str, Any]) -> None:
        part.unlink(missing_ok=True)
        st["h"], st["hashed"] = hashlib.sha256(), 0
        self._count(st, -st["counted"])

    def _count(self, st: dict[str, Any], n: int) -> None:
        st["counted"] += n
        if self.bar is not None and n:
            self.bar.update(n)


# -- the two flows ------------------------------------------------------------------------------
def _download_store(f: _Fetcher, base: str, to: Path, pin: str | None, jobs: int, progress: bool,
                    log: Callable[[str], None]) -> DownloadResult:
    murl = base + "/" + MANIFEST_NAME
    raw = f.get_bytes(murl)
    digest = hashlib.sha256(raw).hexdigest()
    if pin is not None and digest != pin:
        raise DownloadError(f"{murl}: sha256 {digest} does not match the pinned {pin}; nothing downloaded")
    m = parse_published_manifest(raw, murl)
    entries = [*m["shards"], m["index"]]
    to.mkdir(parents=True, exist_ok=True)
    if (to / MANIFEST_NAME).exists() and (to / MANIFEST_NAME).read_bytes() != raw:
        raise DownloadError(f"{to}: already holds a different store; choose another --to")
    todo = [e for e in entries if not ((to / e["file"]).is_file() and (to / e["file"]).stat().st_size
                                       == e["bytes"] and sha256_file(to / e["file"]) == e["sha256"])]
    if todo:  # a file must be (re)fetched: the directory must not look complete meanwhile
        (to / MANIFEST_NAME).unlink(missing_ok=True)
    total = sum(e["bytes"] for e in entries)
    f.bar = tqdm(total=total, initial=total - sum(e["bytes"] for e in todo), unit="B", unit_scale=True,
                 unit_divisor=1024, desc="downloading", disable=None if progress else True)
    errors: list[DownloadError] = []

    def one(e: dict[str, Any]) -> None:
        try:
            f.fetch_file(f"{base}/{e['file']}", to / e["file"], e["bytes"], e["sha256"])
        except _Stopped:
            pass
        except Exception as exc:  # a full disk or a read-only --to stays an OSError (the CLI says it in one line)
            f.stop.set()
            io = isinstance(exc, OSError) and exc.errno
            errors.append(exc if isinstance(exc, DownloadError) or io else DownloadError(f"{e['file']}: {exc}"))

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="butd-dl") as pool:
            list(pool.map(one, todo))
    finally:
        f.stop.set()
        f.bar.close()
    if errors:
        if not isinstance(errors[0], DownloadError):
            raise errors[0]  # the .part files stay: the same command resumes once space is freed
        more = f" (and {len(errors) - 1} more failure(s))" if len(errors) > 1 else ""
        raise DownloadError(f"{errors[0]}{more}; {to} has no manifest, rerun to resume")
    write_bytes_atomic(to / MANIFEST_NAME, raw)  # last: the store is complete only now
    report = verify_store(to, progress=progress)
    if not report.ok:
        (to / MANIFEST_NAME).unlink()
        raise DownloadError(f"{to}: verification failed after download: {'; '.join(report.problems[:3])}")
    log(f"downloaded {len(entries)} file(s), {total} bytes into {to}; manifest sha256 {digest}")
    return DownloadResult(to, base, "store", len(entries), total, digest, report)


def _download_archive(f: _Fetcher, url: str, to: Path, entry: dict[str, Any], fmt: str, progress: bool,
                      log: Callable[[str], None]) -> DownloadResult:
    if (to / MANIFEST_NAME).exists():
        raise DownloadError(f"{to}: already holds a complete store; choose another --to")
    work = to.with_name(to.name + ".download")
    work.mkdir(parents=True, exist_ok=True)
    name = urlsplit(url).path.rsplit("/", 1)[-1] or "archive"
    size = entry.get("size")
    f.bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                 disable=None if progress else True)
    try:
        digest = f.fetch_file(url, work / name, size, entry.get("sha256"))
    finally:
        f.bar.close()
    if entry.get("sha256") is None:
        log(f"trust on first use: sha256 of {name} is {digest} (pin it in a registry to check it next time)")
    from butd.shards.importers import import_files

    log(f"importing {name} as {fmt} (another format: --format)")
    import_files(fmt, [work / name], to, progress=progress)
    report = verify_store(to, progress=progress)
    if not report.ok:
        raise DownloadError(f"{to}: imported store fails verification: {'; '.join(report.problems[:3])}")
    nbytes = (work / name).stat().st_size
    shutil.rmtree(work, ignore_errors=True)
    return DownloadResult(to, url, "archive", 1, nbytes, digest, report)


def download(
    source: str, to: str | Path, *, jobs: int = 4, registry: str | Path | None = None,
    mirror: str | None = None, trust_on_first_use: bool = False, allow_http: bool = False,
    timeout: float = 30, retries: int = 5, fmt: str | None = None, backoff: float = 1.0,
    progress: bool = True, log: Callable[[str], None] | None = None,
) -> DownloadResult:
    """Fetch SOURCE (a store base URL, a registry name, or a legacy archive URL) into the store `to`.

    Raises DownloadError (a StoreError) with a one-line reason; a partial download is resumable.
    """
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    if "://" in source:
        is_archive = urlsplit(source).path.lower().endswith(ARCHIVE_SUFFIXES)
        if is_archive and fmt is None:  # never guessed from the file name: a wrong guess imports garbage
            raise DownloadError(f"{source}: an archive URL needs --format ({', '.join(IMPORT_FORMATS)})")
        entry: dict[str, Any] = {"url": source, "format": fmt if is_archive else "store"}
    else:
        datasets = load_registry(registry)
        if source not in datasets:
            known = ", ".join(sorted(datasets))
            raise DownloadError(f"{source!r} is neither a URL nor a registry name (known: {known})")
        entry = dict(datasets[source])
        is_archive = entry["format"] not in STORE_FORMATS
    url, fmt = entry["url"], fmt or entry["format"]
    if is_archive and fmt not in IMPORT_FORMATS:
        raise DownloadError(f"{source}: unknown archive format {fmt!r} (one of {', '.join(IMPORT_FORMATS)})")
    url = apply_mirror(url, mirror)
    check_url(url, allow_http)
    if is_archive and entry.get("sha256") is None and not trust_on_first_use:
        raise DownloadError(f"{url}: no sha256 is known for this archive, so it cannot be verified; pin "
                            "one in a registry (--registry), or pass --trust-on-first-use to accept it")
    f = _Fetcher(timeout=timeout, retries=retries, backoff=backoff, allow_http=allow_http)
    if is_archive:
        return _download_archive(f, url, Path(to), entry, fmt, progress, log)
    base = url.rstrip("/").removesuffix("/" + MANIFEST_NAME)
    return _download_store(f, base, Path(to), entry.get("sha256"), jobs, progress, log)
