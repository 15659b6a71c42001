"""Writer of the bottom-up-attention.pytorch layout (npz-dir): one ``<id>.npz`` per image in ``OUT/``.

Facts from MILVLG/bottom-up-attention.pytorch ``utils/extract_utils.py`` (``save_roi_features``, called by
``extract_features.py``): ``np.savez_compressed(os.path.join(out_dir, image_stem), x=features [N,2048] float32,
bbox=boxes [N,4] float32, num_bbox=N, image_h=H, image_w=W, info=...)``; ``num_bbox``, ``image_h`` and
``image_w`` are Python ints, stored as 0-d int64 arrays. ``info`` is a dict of label arrays that numpy can
only store pickled; no loader of these files reads it (they read ``x``, ``bbox``, ``image_h``, ``image_w``),
so it is not written and every file opens with ``np.load(path)``, pickles refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from butd.shards.exporters.common import ExportPlan, ExportSummary, Staged, planned_records, progress_bar, write_staged


def write_npz_dir(store, out: Path, plan: ExportPlan, counts: ExportSummary, progress: bool = True) -> Staged:
    """``OUT/<id>.npz`` for every planned image (ids with ``/`` become sub-folders)."""
    staged = Staged([out], dirs=True)
    root = staged.tmp(out)

    def write() -> None:
        with progress_bar(plan, progress) as bar:
            for image_id, rec in planned_records(store, plan, counts):
                path = root / f"{image_id}.npz"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, x=rec["features"], bbox=rec["boxes"],
                                    num_bbox=np.int64(rec["num_boxes"]), image_h=np.int64(rec["image_h"]),
                                    image_w=np.int64(rec["image_w"]))
                bar.update()

    return write_staged(staged, write)
