"""bottom-up-attention.pytorch npz directories: one `<image_id>.npz` per image.

Plain keys: `x` [N,2048], `bbox` [N,4], `num_bbox`, `image_h`, `image_w`. The key `info` is a
pickled dict (objects_id/conf, attrs_id/conf, sometimes obj_cls_prob); it is read only with
allow_pickle, and then through the restricted unpickler, never numpy's own.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from butd.shards.importers.common import Row, RowParseError, per_box, to_int
from butd.shards.legacy_pickle import UnsafePickleError, restricted_loads
from butd.shards.spec import StoreError, scalar

_INFO_FIELDS = {"objects_id": "int64", "objects_conf": "float32", "attrs_id": "int64",
                "attrs_conf": "float32", "obj_cls_prob": "float32"}
_RENAME = {"obj_cls_prob": "cls_prob"}


def _read_info(path: Path) -> dict:
    """Decode the pickled `info` member (a 0-d object array holding a dict), restricted."""
    with zipfile.ZipFile(path) as zf, zf.open("info.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype.kind != "O" or shape != ():
            raise RowParseError(f"'info' is a {dtype} array of shape {shape}, expected a pickled dict")
        try:
            info = restricted_loads(f.read())
        except (UnsafePickleError, Exception) as exc:  # any failure, hostile or corrupt, is a bad row
            raise RowParseError(f"'info' could not be read safely ({exc})") from None
    info = info.item() if isinstance(info, np.ndarray) else info
    if not isinstance(info, dict):
        raise RowParseError("'info' is not a dict")
    return info


def _record(path: Path, allow_pickle: bool, skipped: set[str]) -> dict:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RowParseError(f"not a readable npz file ({exc})") from None
    with npz:
        missing = [k for k in ("x", "bbox", "num_bbox", "image_h", "image_w") if k not in npz.files]
        if missing:
            raise RowParseError(f"missing key(s) {', '.join(missing)}")
        try:
            n = to_int(npz["num_bbox"], "num_bbox")
            x, bbox = npz["x"], npz["bbox"]
            rec = {"image_w": scalar(to_int(npz["image_w"], "image_w")),
                   "image_h": scalar(to_int(npz["image_h"], "image_h"))}
        except ValueError as exc:
            raise RowParseError(str(exc)) from None
        skipped.update(k for k in npz.files if k not in ("x", "bbox", "num_bbox", "image_h", "image_w", "info"))
        has_info = "info" in npz.files
    if x.dtype not in (np.float16, np.float32) or bbox.dtype != np.float32:
        raise RowParseError(f"x is {x.dtype} and bbox is {bbox.dtype}; expected float32 (or float16 x)")
    rec["features"] = per_box(x.reshape(-1), n, x.shape[-1] if x.ndim == 2 else -1, "x")
    rec["boxes"] = per_box(bbox.reshape(-1), n, 4, "bbox")
    rec["num_boxes"] = scalar(n)
    if has_info and allow_pickle:
        info = _read_info(path)
        for key, dtype in _INFO_FIELDS.items():
            if key in info:
                arr = np.asarray(info[key])
                if arr.dtype.kind not in "iuf":
                    raise RowParseError(f"info[{key!r}] is not numeric")
                rec[_RENAME.get(key, key)] = np.ascontiguousarray(arr.astype(dtype, copy=False))
    elif has_info:
        skipped.add("info")
    return rec


def read_npz_dir(sources: list[Path], *, allow_pickle: bool = False, progress: bool = True,
                 skipped: list[str] | None = None, **_) -> Iterator[Row]:
    """Stream every `*.npz` under each source directory; the id is the path stem relative to it."""
    seen_skipped: set[str] = set()
    files: list[tuple[Path, Path]] = []
    for src in sources:
        if not src.is_dir():
            raise StoreError(f"{src}: npz-dir expects a directory of <image_id>.npz files")
        files += [(src, p) for p in sorted(src.rglob("*.npz"))]
    if not files:
        raise StoreError(f"{', '.join(map(str, sources))}: no .npz files found")
    for root, path in tqdm(files, desc="importing", unit="img", disable=None if progress else True):
        image_id = path.relative_to(root).with_suffix("").as_posix()
        try:
            yield Row(image_id, str(path), record=_record(path, allow_pickle, seen_skipped))
        except RowParseError as exc:
            yield Row(image_id, str(path), error=str(exc))
    if skipped is not None:
        skipped.extend(sorted(seen_skipped))
