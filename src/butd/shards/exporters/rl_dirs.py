"""Writer of the self-critical.pytorch layout (rl-dirs): ``OUT_att/``, ``OUT_fc/`` and (regions) ``OUT_box/``.

Facts from ruotianluo/self-critical.pytorch. Regions, as ``scripts/make_bu_data.py --output_dir OUT`` writes
them: ``np.savez_compressed(OUT_att/<id>, feat=features [k,D] float32)``, ``np.save(OUT_fc/<id>,
features.mean(0))`` and ``np.save(OUT_box/<id>, boxes [k,4] float32)``. Grids, as ``scripts/prepro_feats.py``:
``OUT_att/<id>.npz`` with ``feat`` of shape (H, W, D) and ``OUT_fc/<id>.npy`` the mean feature (prepro_feats
averages the unpooled CNN map; here the stored cells, the same when the grid is not pooled). Its data loader
(``captioning/data/dataloader.py``, ``HybridLoader``) opens ``<dir>/<id>.npz`` / ``.npy`` for the ``id`` of
each image in the info JSON (the COCO id) and reads ``np.load(...)["feat"]``; it normalises the boxes
with the image sizes of that JSON, so the layout has no image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from butd.shards.exporters.common import ExportPlan, ExportSummary, Staged, planned_records, progress_bar, write_staged


def rl_paths(out: Path, kind: str) -> list[Path]:
    """``OUT_box`` (regions only), ``OUT_fc``, ``OUT_att``: the order they are committed in, att last."""
    names = (["box"] if kind == "region" else []) + ["fc", "att"]
    return [out.with_name(f"{out.name}_{n}") for n in names]


def write_rl_dirs(store, out: Path, plan: ExportPlan, counts: ExportSummary, progress: bool = True) -> Staged:
    finals = rl_paths(out, plan.kind)
    staged = Staged(finals, dirs=True)
    dirs = {p.name.rsplit("_", 1)[1]: staged.tmp(p) for p in finals}

    def write() -> None:
        with progress_bar(plan, progress) as bar:
            for image_id, rec in planned_records(store, plan, counts):
                feats = rec["features"]
                if plan.kind == "grid":
                    att = feats.reshape(int(rec["grid_h"]), int(rec["grid_w"]), -1)
                else:
                    att = feats
                for d in dirs.values():
                    (d / image_id).parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(dirs["att"] / f"{image_id}.npz", feat=att)
                np.save(dirs["fc"] / f"{image_id}.npy", feats.mean(0))
                if "box" in dirs:
                    np.save(dirs["box"] / f"{image_id}.npy", rec["boxes"])
                bar.update()

    return write_staged(staged, write)
