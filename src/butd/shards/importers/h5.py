"""bottom-up-attention-vqa h5 ("hh-h5"): import row by row (the export is ``butd.shards.exporters.hh_h5``).

Layout: datasets `image_features` (n,k,D), `image_bb` (n,k,4), `spatial_features` (n,k,6) =
[x1/W, y1/H, x2/W, y2/H, w/W, h/H] in float32; image id -> row index in a side file (the original
is a pickle, `*_imgid2idx.pkl`, read only with allow_pickle; butd's export also writes `*.ids.json`,
which is preferred). The h5 has no image size: we recover W and H from boxes and spatial features
(exact for integer sizes, see `_image_size`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from butd.shards.importers.common import Row, RowParseError
from butd.shards.legacy_pickle import restricted_loads
from butd.shards.spec import StoreError, scalar


def load_id_index(path: Path, *, allow_pickle: bool) -> dict[str, int]:
    """Read an image-id -> row map from JSON, or from the original pickle when allowed."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable id index ({exc})") from None
    elif path.suffix in (".pkl", ".pickle"):
        if not allow_pickle:
            raise StoreError(f"{path}: the id index is a pickle; pass --allow-pickle to read it "
                             "(restricted to plain containers), or convert it to JSON")
        data = restricted_loads(path.read_bytes())
    else:
        raise StoreError(f"{path}: id index must be .json (or .pkl with --allow-pickle)")
    if not isinstance(data, dict):
        raise StoreError(f"{path}: id index must map image id -> row")
    try:
        return {str(k): int(v) for k, v in data.items()}
    except (TypeError, ValueError):
        raise StoreError(f"{path}: id index values must be integer rows") from None


def _default_ids(h5_path: Path) -> Path:
    for cand in (h5_path.with_suffix(".ids.json"), h5_path.with_name(h5_path.stem + "_imgid2idx.json"),
                 h5_path.with_name(h5_path.stem + "_imgid2idx.pkl")):  # the pickle: refused without --allow-pickle
        if cand.exists():
            return cand
    raise StoreError(f"{h5_path}: hh-h5 needs the image-id index: pass --ids FILE "
                     "(.json, or the original *_imgid2idx.pkl with --allow-pickle)")


def _image_size(bb: np.ndarray, spatial: np.ndarray) -> tuple[int, int]:
    """Recover (W, H) from pixel boxes and their float32 normalised widths/heights.

    spatial[:,4] = float32(w / W), so w / spatial[:,4] is W within float32 rounding: rounding
    to the nearest integer is exact for any W below 2**22. The widest box is used.
    """
    out = []
    for pix, norm in ((bb[:, 2] - bb[:, 0], spatial[:, 4]), (bb[:, 3] - bb[:, 1], spatial[:, 5])):
        i = int(np.argmax(norm))
        if not norm[i] > 0:
            raise RowParseError("cannot recover the image size: every box has zero width or height")
        out.append(int(round(float(pix[i]) / float(norm[i]))))
    return out[0], out[1]


def read_hh_h5(sources: list[Path], *, allow_pickle: bool = False, ids: str | Path | None = None,
               progress: bool = True, **_) -> Iterator[Row]:
    """Stream rows of one or more hh-h5 files (one id index each; --ids applies to a single file)."""
    if ids is not None and len(sources) != 1:
        raise StoreError("--ids names the index of a single h5 file; import several files one by one")
    for src in sources:
        index = load_id_index(Path(ids) if ids else _default_ids(src), allow_pickle=allow_pickle)
        try:
            f = h5py.File(src, "r")
        except OSError as exc:
            raise StoreError(f"{src}: not a readable HDF5 file ({exc})") from None
        with f:
            for name in ("image_features", "image_bb", "spatial_features"):
                if name not in f:
                    raise StoreError(f"{src}: missing dataset {name!r} (not a bottom-up-attention-vqa h5)")
            feats, bbs, spatial = f["image_features"], f["image_bb"], f["spatial_features"]
            n = feats.shape[0]
            for image_id, row in tqdm(sorted(index.items(), key=lambda kv: kv[1]), desc="importing",
                                      unit="img", disable=None if progress else True):
                where = f"{src}:row {row}"
                if not 0 <= row < n:
                    yield Row(image_id, where, error=f"id index maps it to row {row}, but the file has {n} rows")
                    continue
                try:
                    bb = np.asarray(bbs[row], dtype=np.float32)
                    w, h = _image_size(bb, np.asarray(spatial[row], dtype=np.float32))
                    ft = feats[row]
                except RowParseError as exc:
                    yield Row(image_id, where, error=str(exc))
                    continue
                except OSError as exc:
                    yield Row(image_id, where, error=f"unreadable row ({exc})")
                    continue
                yield Row(image_id, where, record={
                    "boxes": bb, "features": ft, "num_boxes": scalar(bb.shape[0]),
                    "image_w": scalar(w), "image_h": scalar(h),
                })
