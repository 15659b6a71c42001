"""What an extraction did: the summary `butd extract` prints (and ``--json`` gives) and its exit status.

What a store folder already holds, and the rules of resuming it, belong to the store (``butd.shards.folder``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
        if self.failed:
            out.append(f"unreadable images and why: {Path(self.out) / FAILURES_NAME}")
        return out
