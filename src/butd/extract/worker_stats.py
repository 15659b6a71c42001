"""What each model worker reports at the end of a run: peak memory (process RSS, CUDA) and time in the model.

Users size machines by these (an 8 GB GPU, a laptop): ``Summary`` prints them and ``--json`` carries them.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from collections.abc import Callable
from typing import Any


def peak_memory(device: Any = "cpu") -> dict[str, int | None]:
    """This process's peak resident memory (``getrusage`` ru_maxrss: KiB on Linux, bytes on macOS) and, on a
    CUDA device, ``torch.cuda.max_memory_allocated`` (the tensors' peak; the caching allocator reserves a
    little more), else None."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    dev = torch.device(device)
    cuda = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    return {"peak_rss_bytes": int(rss), "cuda_max_allocated_bytes": cuda}


def worker_memory(stats: list[dict[str, Any]], window_s: float) -> dict[str, list]:
    """``Summary`` fields from the workers' ``stats()``: per worker peak RSS, peak CUDA memory (CUDA workers
    only) and the share of the timed window (actors ready -> last record written) spent in the model."""
    cuda = [s["cuda_max_allocated_bytes"] for s in stats if s["cuda_max_allocated_bytes"] is not None]
    return {"peak_rss_bytes": [int(s["peak_rss_bytes"]) for s in stats], "cuda_max_allocated_bytes": cuda,
            "busy_fraction": [round(min(1.0, s["busy_s"] / max(window_s, 1e-9)), 4) for s in stats]}


class WorkerStats:
    """For the model actor (``ModelWorker``): ``stats()`` gives its peak memory and the seconds its methods
    decorated with :func:`timed` took (read once the work is done)."""

    busy_s = 0.0

    def stats(self) -> dict[str, Any]:
        device = getattr(getattr(self, "extractor", None), "device", "cpu")
        return {**peak_memory(device), "busy_s": self.busy_s}


def timed(method: Callable) -> Callable:
    """Adds the wall seconds of each call of ``method`` to ``self.busy_s``."""

    @functools.wraps(method)
    def wrapper(self: WorkerStats, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.busy_s += time.perf_counter() - t0

    return wrapper
