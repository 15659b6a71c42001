"""What an extraction did: the summary `butd extract` prints (and ``--json`` gives) and its exit status.

What a store folder already holds, and the rules of resuming it, belong to the store (``butd.shards.folder``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from butd.shards.folder import FAILURES_NAME

__all__ = ["Summary"]


@dataclass
class Summary:
    """What a run did. ``images_per_s`` counts images processed after the model actors were ready."""

    out: str
    total: int
    written: int
    already_done: int
    failed: int
    elapsed_s: float
    images_per_s: float
    workers: int
    complete: bool
    # per model worker, in actor order; empty when no worker ran (a finished store, nothing to do)
    peak_rss_bytes: list[int] = field(default_factory=list)  # each actor process's peak resident memory
    cuda_max_allocated_bytes: list[int] = field(default_factory=list)  # torch.cuda.max_memory_allocated
    busy_fraction: list[float] = field(default_factory=list)  # share of the timed run spent in the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0: every image is in the store; 3: some could not be read; 1: none is."""
        if self.written + self.already_done == 0:
            return 1
        return 3 if self.failed else 0

    def lines(self) -> list[str]:
        """The human summary ``butd extract`` prints (``--json`` prints :meth:`to_dict`)."""
        head = f"{self.out}: {self.written} written, {self.already_done} already done, {self.failed} failed"
        out = [head + f" of {self.total} images"]
        if self.written:
            out.append(f"{self.images_per_s:.1f} images/s on {self.workers} worker(s), {self.elapsed_s:.0f} s in all")
        if self.peak_rss_bytes:
            mem = "peak memory per worker: RSS " + ", ".join(_mib(b) for b in self.peak_rss_bytes)
            if self.cuda_max_allocated_bytes:
                mem += "; CUDA max allocated " + ", ".join(_mib(b) for b in self.cuda_max_allocated_bytes)
            busy = ", ".join(f"{100 * f:.0f}%" for f in self.busy_fraction)
            out.append(mem + (f"; in the model {busy} of the time" if busy else ""))
        if self.failed:
            out.append(f"unreadable images and why: {Path(self.out) / FAILURES_NAME}")
        return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"
