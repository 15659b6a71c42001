"""Time and peak memory of one step at a time, in this process (Linux /proc).

Per step: wall time and this process's CPU time (all its threads; on a shared machine CPU time shows how the
work grows, wall time also how long others made it wait); the peak resident set (VmHWM, reset at the step's
start through /proc/self/clear_refs, so it is this step's peak including what earlier steps still hold); and
the peak *anonymous* resident set
(RssAnon, sampled every 10 ms by a thread), i.e. the process's own memory without file-backed pages such as
the store's memory map (the "feature bytes" of a training epoch, which the kernel can drop at any time).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any

_FIELD = re.compile(r"^(VmHWM|VmRSS|RssAnon):\s+(\d+) kB", re.M)


def status_mb() -> dict[str, float]:
    """VmHWM, VmRSS and RssAnon of this process in MiB."""
    with open("/proc/self/status") as f:
        return {k: int(v) / 1024 for k, v in _FIELD.findall(f.read())}


def reset_peak() -> bool:
    """Start a new VmHWM window (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """``with meter.step("name") as info: ...``: seconds, cpu_seconds, peak_rss_mb, peak_anon_mb (+ ``info``)."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        info: dict[str, Any] = {}
        exact = reset_peak()
        start = status_mb()
        peak_anon = [start["RssAnon"]]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.01):
                peak_anon[0] = max(peak_anon[0], status_mb()["RssAnon"])

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield info
        finally:
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            stop.set()
            thread.join()
            end = status_mb()
            self.results[name] = {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": end["VmHWM"] if exact else None,
                "peak_anon_mb": max(peak_anon[0], end["RssAnon"]),
                "start_rss_mb": start["VmRSS"],
                "info": info,
            }
