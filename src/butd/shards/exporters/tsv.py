"""Writers of the bottom-up-attention TSV (pa-tsv) and the LXMERT TSV (lxmert-tsv).

As their reference tools write them (facts from peteanderson80/bottom-up-attention ``tools/generate_tsv.py``
and airsplay/py-bottom-up-attention ``demo/detectron2_mscoco_proposal_maxnms.py``, the LXMERT features):
``csv.DictWriter(f, delimiter="\\t", fieldnames=FIELDNAMES)`` with the csv module's default ``\\r\\n`` line
ends, no header, integers in decimal and arrays as base64 of their little-endian bytes (float32 boxes,
features and confidences; int64 object and attribute ids). LXMERT puts the height before the width.
"""

from __future__ import annotations

import base64
import csv
from pathlib import Path

import numpy as np

from butd.shards.exporters.common import ExportPlan, ExportSummary, Staged, planned_records, progress_bar, write_staged
from butd.shards.importers.tsv import LXMERT_FIELDS, PA_FIELDS

_LE = {"float32": "<f4", "int64": "<i8"}


def _b64(arr: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=_LE[dtype]).tobytes()).decode("ascii")


def _pa_row(image_id: str, rec: dict) -> list:
    return [image_id, int(rec["image_w"]), int(rec["image_h"]), int(rec["num_boxes"]),
            _b64(rec["boxes"], "float32"), _b64(rec["features"], "float32")]


def _lxmert_row(image_id: str, rec: dict) -> list:
    return [image_id, int(rec["image_h"]), int(rec["image_w"]),
            _b64(rec["objects_id"], "int64"), _b64(rec["objects_conf"], "float32"),
            _b64(rec["attrs_id"], "int64"), _b64(rec["attrs_conf"], "float32"),
            int(rec["num_boxes"]), _b64(rec["boxes"], "float32"), _b64(rec["features"], "float32")]


def _write(store, out: Path, plan: ExportPlan, counts: ExportSummary, progress: bool, row, nfields: int) -> Staged:
    staged = Staged([out])

    def write() -> None:
        with open(staged.tmp(out), "w", newline="", encoding="utf-8") as f, progress_bar(plan, progress) as bar:
            writer = csv.writer(f, delimiter="\t")  # the csv default dialect: "\r\n", minimal quoting
            for image_id, rec in planned_records(store, plan, counts):
                fields = row(image_id, rec)
                assert len(fields) == nfields
                writer.writerow(fields)
                bar.update()

    return write_staged(staged, write)


def write_pa_tsv(store, out: Path, plan: ExportPlan, counts: ExportSummary, progress: bool = True) -> Staged:
    """One TSV: ``image_id, image_w, image_h, num_boxes, boxes, features``."""
    return _write(store, out, plan, counts, progress, _pa_row, len(PA_FIELDS))


def write_lxmert_tsv(store, out: Path, plan: ExportPlan, counts: ExportSummary, progress: bool = True) -> Staged:
    """One TSV: ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features``."""
    return _write(store, out, plan, counts, progress, _lxmert_row, len(LXMERT_FIELDS))
