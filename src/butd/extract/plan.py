"""The work plan of an extraction: images in id order (one file per id), cut into fixed chunks and batches.

Deterministic: the same images and sizes always give the same chunks and batches, so a resumed run adds the
same records in the same order as an uninterrupted one (the shards roll at the same places).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from butd.errors import UserError
from butd.extract.sources import SourceItem

__all__ = ["pending_batches", "sorted_unique"]


def sorted_unique(items: Iterable[SourceItem]) -> list[SourceItem]:
    by_id: dict[str, SourceItem] = {}
    for it in items:
        if it.image_id in by_id and by_id[it.image_id].path != it.path:
            raise UserError(f"image id {it.image_id!r} names two files", f"{by_id[it.image_id].path}, {it.path}",
                            "keep one of them, or rename one (ids are file names without suffix)", usage=True)
        by_id.setdefault(it.image_id, it)
    return [by_id[k] for k in sorted(by_id)]


def pending_batches(items: list[SourceItem], writer: Any, failed: set[str], shard_size: int,
                    batch_size: int) -> tuple[int, list[list[SourceItem]]]:
    """(images already done, the batches left): a chunk of ``shard_size`` whose every image is in the store
    (``writer``) or in ``failed`` is skipped whole; any other chunk is cut into its fixed batches again."""
    done = sum(1 for it in items if it.image_id in writer or it.image_id in failed)
    batches: list[list[SourceItem]] = []
    for c in range(0, len(items), shard_size):
        chunk = items[c:c + shard_size]
        if all(it.image_id in writer or it.image_id in failed for it in chunk):
            continue
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    return done, batches
