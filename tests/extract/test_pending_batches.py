"""The resume plan: chunks whose every image is stored or failed are skipped; any other chunk is redone whole."""

from __future__ import annotations

from butd.extract.runner import pending_batches
from butd.extract.sources import SourceItem


def test_done_chunks_are_skipped_and_partial_chunks_rebatched_whole() -> None:
    items = [SourceItem(f"{i:03d}", f"/x/{i}.jpg") for i in range(23)]
    stored = {it.image_id for it in items[:10]} | {"013"}  # chunk 0..9 complete, chunk 10..19 has 013
    failed = {"020", "021", "022"}  # the last chunk (20..22) failed entirely: nothing to redo
    done, batches = pending_batches(items, stored, failed, 10, 4)
    assert done == 14
    assert [[it.image_id for it in b] for b in batches] == [
        ["010", "011", "012", "013"], ["014", "015", "016", "017"], ["018", "019"]]
    assert pending_batches(items, set(), set(), 10, 4)[1][-1] == items[20:]  # a fresh run: every chunk, same cuts
    assert pending_batches(items, {it.image_id for it in items}, set(), 10, 4) == (23, [])
