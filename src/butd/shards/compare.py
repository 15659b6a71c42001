"""Compare two feature stores image by image: "is it my features or the published ones?"

Images are matched by id. Region records have their boxes matched one to one (the Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``) on the cost ``1 - IoU + min(1, feature difference)``: IoU first,
features to tell apart boxes with the same coordinates (boxes clipped to the same empty box at the image
corner). Grid records are compared cell by cell and must have the same grid. Per image:

* box counts, and for matched pairs the IoU (min and mean; boxes whose coordinates differ are named);
* the relative feature difference of a pair, ``max |a - b| / max |b|`` over the feature vector (B is the
  reference), its maximum and mean; rows whose features differ are named;
* object / attribute agreement of the pairs (``objects_id`` / ``attrs_id``, where both stores have them).

The same matching serves the extraction parity test (``tests/extract/test_parity_detectron2.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from butd.errors import UserError

__all__ = ["ImageComparison", "compare_records", "compare_stores", "describe", "match_boxes", "pair_iou",
           "relative_difference"]


def pair_iou(a: np.ndarray, b: np.ndarray, pad: float = 0.0) -> np.ndarray:
    """IoU [N, M] of boxes a [N, 4] and b [M, 4] (x1 y1 x2 y2); ``pad=1`` measures Caffe's "+1" areas."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    off = np.array([0.0, 0.0, pad, pad])
    a, b = a + off, b + off
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def relative_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M]: max |a_i - b_j| / max |b_j| for feature rows a [N, D], b [M, D] (B is the reference).

    Computed in float32 one row of A at a time (cache-sized temporaries: 100 x 100 boxes of 2048-d features
    take ~20 ms); the matched pairs' differences are measured again in float64 by :func:`compare_records`."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = np.maximum(np.abs(b).max(1), 1e-12) if len(b) else np.ones(0, np.float32)
    out = np.empty((len(a), len(b)), np.float64)
    for i in range(len(a)):
        out[i] = np.abs(a[i][None, :] - b).max(1)
    return out / scale[None, :]


def _row_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N]: max |a_i - b_i| / max |b_i| for aligned rows."""
    return np.abs(a - b).max(1) / np.maximum(np.abs(b).max(1), 1e-12)


def match_boxes(boxes_a: np.ndarray, feats_a: np.ndarray, boxes_b: np.ndarray, feats_b: np.ndarray,
                pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of A's boxes to B's: (rows of A, their B indices), min(N, M) pairs, rows ascending."""
    from scipy.optimize import linear_sum_assignment

    cost = 1.0 - pair_iou(boxes_a, boxes_b, pad) + np.minimum(relative_difference(feats_a, feats_b), 1.0)
    rows, cols = linear_sum_assignment(cost)
    return rows, cols


@dataclass
class ImageComparison:
    """How one image's record in A differs from its record in B."""

    image_id: str
    rows_a: int
    rows_b: int
    matched: int
    min_iou: float | None = None  # region stores only
    mean_iou: float | None = None
    max_feature_diff: float = 0.0
    mean_feature_diff: float = 0.0
    objects_agree: float | None = None  # share of matched pairs with the same object id
    attributes_agree: float | None = None
    moved: list[list] = field(default_factory=list)  # [row in A, row in B, IoU] whose coordinates differ
    changed: list[list] = field(default_factory=list)  # [row in A, row in B, relative difference] > 0
    relabelled: list[list] = field(default_factory=list)  # [row in A, row in B] whose object/attribute ids differ
    problem: str | None = None  # why the records cannot be compared (different grids)
    match: list[int] = field(default_factory=list)  # B row of each matched A row, in A's row order

    @property
    def identical(self) -> bool:
        return (self.problem is None and self.rows_a == self.rows_b == self.matched and not self.moved
                and not self.changed and not self.relabelled)

    def within(self, tolerance: float, min_iou: float) -> bool:
        """Same rows, every pair at IoU >= ``min_iou``, features within ``tolerance``, labels equal."""
        return (self.problem is None and self.rows_a == self.rows_b == self.matched
                and (self.min_iou is None or self.min_iou >= min_iou) and self.max_feature_diff <= tolerance
                and not self.relabelled)


def _ids(rec: Mapping[str, Any], key: str) -> np.ndarray | None:
    return np.asarray(rec[key]).astype(np.int64).ravel() if key in rec else None


def compare_records(image_id: str, a: Mapping[str, Any], b: Mapping[str, Any], pad: float = 0.0) -> ImageComparison:
    """Compare record ``a`` with the reference ``b`` (both region or both grid records; array-likes)."""
    fa, fb = np.asarray(a["features"], np.float64), np.asarray(b["features"], np.float64)
    if "grid_h" in a or "grid_h" in b:
        ga, gb = (int(a.get("grid_h", 0)), int(a.get("grid_w", 0))), (int(b.get("grid_h", 0)), int(b.get("grid_w", 0)))
        if ga != gb:
            return ImageComparison(image_id, len(fa), len(fb), 0, problem=f"grid {ga[0]}x{ga[1]} vs {gb[0]}x{gb[1]}")
        rows = cols = np.arange(len(fa))
        ious = None
    else:
        rows, cols = match_boxes(a["boxes"], fa, b["boxes"], fb, pad)
        ious = pair_iou(a["boxes"], b["boxes"], pad)[rows, cols]
    rel = _row_difference(fa[rows], fb[cols]) if len(rows) else np.zeros(0)
    out = ImageComparison(image_id, len(fa), len(fb), len(rows), match=[int(c) for c in cols],
                          max_feature_diff=float(rel.max()) if len(rel) else 0.0,
                          mean_feature_diff=float(rel.mean()) if len(rel) else 0.0)
    if ious is not None:
        ba, bb = np.asarray(a["boxes"], np.float64), np.asarray(b["boxes"], np.float64)
        out.min_iou = float(ious.min()) if len(ious) else None
        out.mean_iou = float(ious.mean()) if len(ious) else None
        out.moved = [[int(r), int(c), round(float(v), 6)] for r, c, v in zip(rows, cols, ious)
                     if not np.array_equal(ba[r], bb[c])]
    out.changed = [[int(r), int(c), float(v)] for r, c, v in zip(rows, cols, rel) if v > 0]
    relabelled: set[tuple[int, int]] = set()
    for key, attr in (("objects_id", "objects_agree"), ("attrs_id", "attributes_agree")):
        ia, ib = _ids(a, key), _ids(b, key)
        if ia is not None and ib is not None and len(rows):
            same = ia[rows] == ib[cols]
            setattr(out, attr, float(same.mean()))
            relabelled.update((int(r), int(c)) for r, c, s in zip(rows, cols, same) if not s)
    out.relabelled = [list(x) for x in sorted(relabelled)]
    return out


def _store(path: str | Path, role: str):
    from butd.shards.spec import StoreError
    from butd.shards.store import FeatureStore

    try:
        return FeatureStore(path)
    except (StoreError, OSError, ValueError) as e:
        raise UserError(f"cannot open store {role}: {str(e).splitlines()[0]}", path,
                        "pass two finished feature stores (butd shards info STORE)", usage=True) from None


def compare_stores(path_a: str | Path, path_b: str | Path, *, tolerance: float = 0.0, min_iou: float = 0.99,
                   pad: float = 0.0, progress: Any = None) -> dict[str, Any]:
    """Compare every image the two stores share; returns {"summary", "images"} (JSON-ready).

    ``ok`` in the summary: both stores hold the same ids and every image is :meth:`ImageComparison.within`
    ``tolerance`` and ``min_iou``. Mixing a region store with a grid store is refused.
    """
    a, b = _store(path_a, "A"), _store(path_b, "B")
    if a.kind != b.kind:
        raise UserError(f"cannot compare a {a.kind} store with a {b.kind} store", f"{path_a} vs {path_b}",
                        "compare region stores with region stores and grid stores with grid stores", usage=True)
    da, db = a.dims.get("feature_dim"), b.dims.get("feature_dim")
    if da is not None and db is not None and da != db:
        raise UserError(f"feature widths differ: {da} vs {db}", f"{path_a} vs {path_b}",
                        "compare stores of the same extractor layer (butd shards info STORE)", usage=True)
    ids_a, ids_b = set(a.image_ids()), set(b.image_ids())
    common = sorted(ids_a & ids_b)
    images = []
    for image_id in (progress(common) if progress else common):
        images.append(compare_records(image_id, a[image_id], b[image_id], pad))
    differing = [c for c in images if not c.identical]
    outside = [c.image_id for c in images if not c.within(tolerance, min_iou)]
    ious = [c.min_iou for c in images if c.min_iou is not None]
    agree = [c.objects_agree for c in images if c.objects_agree is not None]
    summary = {
        "a": str(path_a), "b": str(path_b), "kind": a.kind, "images_a": len(ids_a), "images_b": len(ids_b),
        "compared": len(images), "only_a": sorted(ids_a - ids_b)[:20], "only_b": sorted(ids_b - ids_a)[:20],
        "n_only_a": len(ids_a - ids_b), "n_only_b": len(ids_b - ids_a), "identical": len(images) - len(differing),
        "count_mismatch": sum(c.rows_a != c.rows_b for c in images),
        "min_iou": min(ious) if ious else None,
        "max_feature_diff": max((c.max_feature_diff for c in images), default=0.0),
        "mean_feature_diff": float(np.mean([c.mean_feature_diff for c in images])) if images else 0.0,
        "objects_agree": float(np.mean(agree)) if agree else None,
        "tolerance": tolerance, "min_iou_required": min_iou, "outside_tolerance": outside[:20],
        "n_outside_tolerance": len(outside),
        "ok": not outside and ids_a == ids_b and bool(images),
    }
    return {"summary": summary, "images": [asdict(c) for c in differing]}


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def describe(result: Mapping[str, Any], limit: int = 20) -> list[str]:
    """The text report of :func:`compare_stores`: one line per differing image (up to ``limit``), then a summary."""
    s = result["summary"]
    lines = []
    for img in result["images"][:limit]:
        if img["problem"]:
            lines.append(f"{img['image_id']}: {img['problem']}")
            continue
        same = img["rows_a"] == img["rows_b"]
        parts = [f"rows {img['rows_a']}" if same else f"rows {img['rows_a']} vs {img['rows_b']}"]
        if img["min_iou"] is not None:
            parts.append(f"IoU min {_fmt(img['min_iou'])}")
        parts.append(f"feature diff max {_fmt(img['max_feature_diff'], '.3g')}")
        if img["moved"]:
            parts.append("moved " + ", ".join(f"A{r}->B{c} (IoU {v:.4f})" for r, c, v in img["moved"][:5]))
        if img["changed"]:
            parts.append("features " + ", ".join(f"A{r}->B{c} ({v:.3g})" for r, c, v in img["changed"][:5])
                         + (f" +{len(img['changed']) - 5}" if len(img["changed"]) > 5 else ""))
        if img["relabelled"]:
            parts.append("labels " + ", ".join(f"A{r}->B{c}" for r, c in img["relabelled"][:5]))
        lines.append(f"{img['image_id']}: " + "; ".join(parts))
    if len(result["images"]) > limit:
        lines.append(f"... {len(result['images']) - limit} more differing image(s) (--limit, --json)")
    lines.append(f"{s['kind']} stores: {s['compared']} image(s) compared, {s['identical']} identical"
                 + (f", {s['n_only_a']} only in A" if s["n_only_a"] else "")
                 + (f", {s['n_only_b']} only in B" if s["n_only_b"] else ""))
    lines.append(f"box count mismatches {s['count_mismatch']}; min IoU {_fmt(s['min_iou'])}; "
                 f"feature diff max {_fmt(s['max_feature_diff'], '.3g')} mean {_fmt(s['mean_feature_diff'], '.3g')}; "
                 f"object agreement {_fmt(s['objects_agree'])}")
    if s["ok"] and s["identical"] == s["compared"]:
        lines.append("IDENTICAL: every image, box, feature and label is equal")
    verdict = "OK" if s["ok"] else "DIFFER"
    lines.append(f"{verdict}: {s['n_outside_tolerance']} image(s) outside tolerance {s['tolerance']:g} "
                 f"(min IoU {s['min_iou_required']:g})")
    return lines
