"""Writer of the bottom-up-attention-vqa layout (hh-h5): ``OUT`` (HDF5) + ``{stem}_imgid2idx.pkl``.

Facts from hengyuan-hu/bottom-up-attention-vqa ``tools/detection_features_converter.py`` (the writer) and
``dataset.py`` (``VQAFeatureDataset``, the reader): datasets ``image_features`` (n,k,D), ``image_bb`` (n,k,4)
and ``spatial_features`` (n,k,6) = [x1/W, y1/H, x2/W, y2/H, w/W, h/H], all ``'f'`` (float32), computed in
float32; the id index ``{name}36_imgid2idx.pkl`` next to ``{name}36.hdf5`` is a pickled ``{int image id: row}``,
which the loader opens with pickle and looks up with the integer ``image_id`` of the VQA questions.

The pickle holds a plain dict of Python ints only (written here, never read back by butd without
``--allow-pickle``); ``{stem}.ids.json`` carries the same index for butd's own pickle-free import.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np

from butd.shards.exporters.common import ExportPlan, ExportSummary, Staged, planned_records, progress_bar, write_staged


def spatial_features(boxes: np.ndarray, image_w: int, image_h: int) -> np.ndarray:
    """[k,6] float32 [x1/W, y1/H, x2/W, y2/H, w/W, h/H], computed in float32 as the original converter."""
    w, h = np.float32(image_w), np.float32(image_h)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sw, sh = bw / w, bh / h
    sx, sy = boxes[:, 0] / w, boxes[:, 1] / h
    return np.stack([sx, sy, sx + sw, sy + sh, sw, sh], axis=1).astype(np.float32)


def index_paths(out: Path) -> tuple[Path, Path]:
    """The pickled index the loader opens and butd's JSON copy: ``train36.hdf5`` -> ``train36_imgid2idx.pkl``,
    ``train36.ids.json``."""
    return out.with_name(out.stem + "_imgid2idx.pkl"), out.with_suffix(".ids.json")


def write_hh_h5(store, out: Path, plan: ExportPlan, counts: ExportSummary, progress: bool = True) -> Staged:
    """Rows in plan order; every image has ``plan.boxes`` boxes (the plan refused or padded the others)."""
    pkl, ids_json = index_paths(out)
    staged = Staged([ids_json, pkl, out])  # the h5, which the loader opens last, gets its name last
    n, k, d = len(plan.ids), int(plan.boxes), store.feature_dim

    def write() -> None:
        index: dict[int, int] = {}
        with h5py.File(staged.tmp(out), "w") as f, progress_bar(plan, progress) as bar:
            feats = f.create_dataset("image_features", (n, k, d), "f")
            bbs = f.create_dataset("image_bb", (n, k, 4), "f")
            spat = f.create_dataset("spatial_features", (n, k, 6), "f")
            for row, (image_id, rec) in enumerate(planned_records(store, plan, counts)):
                feats[row] = rec["features"]
                bbs[row] = rec["boxes"]
                spat[row] = spatial_features(rec["boxes"], int(rec["image_w"]), int(rec["image_h"]))
                index[int(image_id)] = row
                bar.update()
        staged.tmp(pkl).write_bytes(pickle.dumps(index, protocol=2))  # readable by Python 2 and 3 pickle
        staged.tmp(ids_json).write_text(json.dumps({str(i): r for i, r in index.items()}), encoding="utf-8")

    return write_staged(staged, write)
