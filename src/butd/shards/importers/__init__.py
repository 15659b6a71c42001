"""Importers of the community's precomputed feature formats into a butd store.

Every reader streams rows (constant memory) and yields `Row`s; `import_files` validates them through
ShardWriter. A bad row aborts the import and removes the partial store, unless `skip_bad`, which
records it in `failures.jsonl` inside the store and goes on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from butd.registry import Entry, Registry
from butd.shards.folder import FailureLog
from butd.shards.importers.common import ImportRowError, Row
from butd.shards.lock import folder_lock
from butd.shards.spec import FAILURES_NAME, RecordError, StoreError
from butd.shards.writer import ShardWriter

# name -> Entry(None, reader). A reader is ``(sources, *, allow_pickle, ids, progress, skipped) -> Iterator[Row]``.
# To add a format: one reader module and one line here; `butd shards import/download --format` list it.
IMPORT_FORMATS = Registry("import format", {
    "pa-tsv": Entry(None, "butd.shards.importers.tsv:read_pa_tsv",
                    "bottom-up-attention TSV (Caffe original): image_id, image_w, image_h, num_boxes, boxes, features"),
    "lxmert-tsv": Entry(None, "butd.shards.importers.tsv:read_lxmert_tsv",
                        "LXMERT TSV: ids, objects/attributes with confidences, boxes, features"),
    "hh-h5": Entry(None, "butd.shards.importers.h5:read_hh_h5",
                   "bottom-up-attention-vqa h5: image_features, image_bb, spatial_features"),
    "npz-dir": Entry(None, "butd.shards.importers.npz:read_npz_dir",
                     "bottom-up-attention.pytorch: one .npz per image (x, bbox, num_bbox, image_h, image_w)"),
})
FORMATS = tuple(IMPORT_FORMATS.table)  # the names, for callers that want a plain tuple


@dataclass
class ImportSummary:
    dest: Path
    records: int = 0
    failures: list[dict] = field(default_factory=list)
    skipped_fields: list[str] = field(default_factory=list)


def import_files(
    fmt: str,
    sources: list[str | Path],
    dest: str | Path,
    *,
    skip_bad: bool = False,
    allow_pickle: bool = False,
    ids: str | Path | None = None,
    feature_dim: int | None = None,
    max_records: int = 1000,
    progress: bool = True,
) -> ImportSummary:
    """Import `sources` of format `fmt` into a new store at `dest`; exact to the bit.

    Raises ImportRowError ("file:line: reason") on the first bad row unless skip_bad.
    """
    if fmt not in IMPORT_FORMATS:
        raise StoreError(f"unknown import format {fmt!r} (expected one of {', '.join(IMPORT_FORMATS.names())})")
    sources = [Path(s) for s in sources]
    for s in sources:
        if not s.exists():
            raise StoreError(f"{s}: no such file or directory")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise StoreError(f"{dest}: exists and is not empty; choose a new destination")
    summary = ImportSummary(dest)
    source_info = {"format": fmt, "files": [s.name for s in sources]}
    created = not dest.exists()
    with folder_lock(dest, "store"):
        writer = ShardWriter(dest, "region", max_records=max_records, source=source_info)
        try:
            rows = IMPORT_FORMATS.builder(fmt)(sources, allow_pickle=allow_pickle, ids=ids, progress=progress,
                                               skipped=summary.skipped_fields)
            for row in rows:
                reason = row.error
                if reason is None:
                    try:
                        if feature_dim is not None and row.record["features"].shape[-1] != feature_dim:
                            raise RecordError(f"features have width {row.record['features'].shape[-1]}, "
                                              f"expected {feature_dim}")
                        writer.add(row.image_id, row.record)
                        continue
                    except RecordError as exc:
                        reason = str(exc)
                if not skip_bad:
                    raise ImportRowError(f"{row.where}: {reason}")
                summary.failures.append({"image_id": row.image_id, "where": row.where, "reason": reason})
            log = FailureLog(dest / FAILURES_NAME)
            for fail in summary.failures:
                log.add(fail["image_id"], fail["where"], fail["reason"], once=False)  # every bad row
            writer.close()
        except BaseException:
            writer.abort()  # an import is not resumable: nothing of it is left
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            else:
                (dest / FAILURES_NAME).unlink(missing_ok=True)
            raise
    summary.records = len(writer)
    return summary


__all__ = ["FORMATS", "IMPORT_FORMATS", "ImportRowError", "ImportSummary", "Row", "import_files"]
