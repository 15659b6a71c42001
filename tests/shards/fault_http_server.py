"""A static-file HTTP server on 127.0.0.1 for tests: Range requests, request log, fault injection.

    with FaultServer(root) as srv:
        srv.fault("/store/shard-00000.lmdb", "drop")      # next GET of that path: half the body, then close
        srv.fault("/x.zip", "500", times=None)             # every GET answers 500
        ... srv.url + "/store" ...
        srv.requests_for("/store/shard-00000.lmdb")       # [{"path":..., "range":...}, ...]

Faults: "drop" (send half the body, close), "flip" (flip one byte of the body), "404", "500",
"slow" (wait `slow_s` seconds before answering), "norange" (ignore the Range header).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

FAULTS = ("drop", "flip", "404", "500", "slow", "norange")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        owner = self.server.owner
        fault = owner.take_fault(path)
        owner.log(path, rng, fault)
        if fault == "slow":
            if owner.closing.wait(owner.slow_s):
                return
        if fault in ("404", "500"):
            self.send_error(int(fault))
            return
        f = owner.resolve(path)
        if f is None:
            self.send_error(404)
            return
        data = f.read_bytes()
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and fault != "norange":
            start, status = int(m.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = bytearray(data[start:])
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if fault == "flip" and body:
            body[len(body) // 2] ^= 0xFF
        if fault == "drop":
            body = body[: len(body) // 2]
            self.close_connection = True
        try:
            self.wfile.write(bytes(body))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultServer


class FaultServer:
    """Serves files under `root` at http://127.0.0.1:PORT/ from a background thread."""

    def __init__(self, root: str | Path, slow_s: float = 3.0) -> None:
        self.root = Path(root).resolve()
        self.slow_s = slow_s
        self.requests: list[dict[str, Any]] = []
        self.closing = threading.Event()
        self._faults: dict[str, list[str | tuple[str, None]]] = {}
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fault(self, path: str, kind: str, times: int | None = 1) -> None:
        """Inject `kind` on the next `times` GETs of `path` (None: on every GET)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            queue = self._faults.setdefault(path, [])
            queue.extend([kind] * times if times is not None else [(kind, None)])

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(path, None)

    def take_fault(self, path: str) -> str | None:
        with self._lock:
            queue = self._faults.get(path)
            if not queue:
                return None
            head = queue[0]
            if isinstance(head, tuple):
                return head[0]  # permanent
            return queue.pop(0)

    def log(self, path: str, rng: str | None, fault: str | None) -> None:
        with self._lock:
            self.requests.append({"path": path, "range": rng, "fault": fault})

    def requests_for(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path]

    def resolve(self, path: str) -> Path | None:
        f = (self.root / path.lstrip("/")).resolve()
        if self.root not in f.parents or not f.is_file():
            return None
        return f

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
