"""Grounding of each generated word: the regions it attended to, and whether they hold the object it names.

For every word of a caption (and every VQA question) the top-k attended regions are recorded: box (pixels,
x1 y1 x2 y2), weight, and the detector's "attribute object" name where the store has one. A grid's cells
are regions too (cell boxes over the image). Where the word is an object mention (the CHAIR word list,
:mod:`butd.evaluate.chair`; a two-word phrase is grounded at its last word) and the image has ground-truth
boxes of that object, two numbers are measured:

* **grounding accuracy**: the top-attended region's box has IoU >= 0.5 with a ground-truth box of the
  object (the localisation criterion of Zhou et al., CVPR 2019, "Grounded Video Description");
* **attention correctness** (Liu et al., AAAI 2017, "Attention Correctness in Neural Image Captioning"):
  the attention mass inside the ground-truth region, the union of the object's boxes. The paper spreads a
  grid's attention over the pixels of each cell (the map upsampled to the image) and sums it inside the
  region; here every region spreads its weight evenly over its box likewise, so a region contributes
  weight x (area of its box inside the union / area of its box). For grids this is the paper's definition
  with nearest-neighbour upsampling.

Both are averaged over the mentions that have ground-truth boxes of their object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from butd.errors import UserError
from butd.evaluate.chair import ChairWords
from butd.shards.compare import pair_iou

__all__ = ["IOU_THRESHOLD", "baseline_attention", "cell_boxes", "ground_caption", "grounding_summary",
           "load_box_file", "mass_inside", "record_boxes", "top_regions"]

IOU_THRESHOLD = 0.5
BOX_FORMAT = "butd-grounding-boxes"


def _area_inside_union(box: np.ndarray, union: np.ndarray) -> float:
    """Exact area of ``box`` covered by the union of ``union`` [G, 4] (coordinate compression)."""
    clipped = np.concatenate([np.maximum(union[:, :2], box[:2]), np.minimum(union[:, 2:], box[2:])], 1)
    clipped = clipped[(clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])]
    if not len(clipped):
        return 0.0
    xs, ys = np.unique(clipped[:, [0, 2]]), np.unique(clipped[:, [1, 3]])
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside = ((cx[None, :, None] > clipped[:, None, None, 0]) & (cx[None, :, None] < clipped[:, None, None, 2])
              & (cy[None, None, :] > clipped[:, None, None, 1]) & (cy[None, None, :] < clipped[:, None, None, 3]))
    covered = inside.any(0)  # [X-1, Y-1]
    return float((np.diff(xs)[:, None] * np.diff(ys)[None, :] * covered).sum())


def mass_inside(boxes: np.ndarray, weights: np.ndarray, region: np.ndarray) -> float:
    """Attention mass inside the union of ``region`` [G, 4]: sum_i w_i |box_i n region| / |box_i|.

    Weights are renormalised to sum to 1; a degenerate (empty) box contributes nothing.
    """
    boxes, w = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(weights, np.float64).ravel()
    region = np.asarray(region, np.float64).reshape(-1, 4)
    total = w.sum()
    if total <= 0 or not len(region):
        return 0.0
    out = 0.0
    for box, wi in zip(boxes, w / total):
        area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
        if wi > 0 and area > 0:
            out += wi * _area_inside_union(box, region) / area
    return out


def cell_boxes(grid_h: int, grid_w: int, image_w: int, image_h: int) -> np.ndarray:
    """Boxes of a grid's cells over the image, row-major like the store's rows -> [H*W, 4]."""
    xs, ys = np.linspace(0, image_w, grid_w + 1), np.linspace(0, image_h, grid_h + 1)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(grid_h) for c in range(grid_w)],
                    dtype=np.float64)


def record_boxes(rec: Mapping[str, Any], k: int, where: Any = "--attention") -> np.ndarray:
    """Boxes of the first ``k`` rows of a store record: its region boxes, or its grid's cells."""
    if "grid_h" in rec:
        return cell_boxes(int(rec["grid_h"]), int(rec["grid_w"]), int(rec["image_w"]), int(rec["image_h"]))[:k]
    if "boxes" not in rec or len(rec["boxes"]) < k:
        raise UserError("the feature store has no boxes for its regions", where,
                        "use a store made by `butd extract` or an import with boxes for --attention", usage=True)
    boxes = np.asarray(rec["boxes"][:k], np.float64)
    if k and not ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).any():
        raise UserError("the feature store's boxes are all empty (zero-filled)", where,
                        "use a store whose regions have their boxes for --attention", usage=True)
    return boxes


def top_regions(weights: np.ndarray, boxes: np.ndarray, labels: Sequence[str] = (), k: int = 3) -> list[dict]:
    """The ``k`` highest-weighted regions: [{"region", "box", "weight", "name"?}], heaviest first."""
    w = np.asarray(weights, np.float64).ravel()
    order = np.argsort(-w, kind="stable")[:k]
    out = []
    for i in order.tolist():
        item = {"region": i, "box": [round(float(v), 2) for v in boxes[i]], "weight": round(float(w[i]), 6)}
        if i < len(labels) and labels[i]:
            item["name"] = labels[i]
        out.append(item)
    return out


def ground_caption(words: Sequence[str], attention: np.ndarray, boxes: np.ndarray, chair_words: ChairWords | None,
                   truth: Sequence[tuple[str, Sequence[float]]] = (), labels: Sequence[str] = (),
                   k: int = 3) -> list[dict]:
    """Per word of a caption: its top-k regions; for object mentions with ground truth, the two measures.

    ``attention`` [T >= len(words), K] holds the step of each word; ``truth`` is [(object, box)] of the image.
    """
    attention = np.asarray(attention, np.float64)
    out = [{"word": w, "top": top_regions(attention[t], boxes, labels, k)} for t, w in enumerate(words)]
    if chair_words is None:
        return out
    by_object: dict[str, list[Sequence[float]]] = {}
    for obj, box in truth:
        by_object.setdefault(obj, []).append(box)
    for m in chair_words.mentions([w.lower() for w in words]):
        t = m.end - 1
        out[t]["object"] = m.object
        gt = by_object.get(m.object)
        if not gt:
            continue
        gt_arr = np.asarray(gt, np.float64).reshape(-1, 4)
        best = int(np.argmax(attention[t]))
        out[t]["grounded"] = bool(pair_iou(boxes[best:best + 1], gt_arr).max() >= IOU_THRESHOLD)
        out[t]["correctness"] = round(mass_inside(boxes, attention[t], gt_arr), 6)
    return out


def baseline_attention(attention: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A no-grounding baseline of ``attention`` [T, K]: "uniform" (1/K on every region) or "shuffled" (each
    step's weights permuted over the regions: as peaked as the model, placed at random)."""
    att = np.asarray(attention, np.float64)
    if kind == "uniform":
        return np.full_like(att, 1.0 / att.shape[1])
    if kind == "shuffled":
        return np.stack([row[rng.permutation(len(row))] for row in att]) if len(att) else att
    raise ValueError(f"unknown baseline {kind!r} (uniform or shuffled)")


def grounding_summary(grounded: Mapping[Any, Sequence[dict]]) -> dict[str, Any]:
    """Grounding accuracy and attention correctness over every measured mention of ``grounded``
    (image id -> :func:`ground_caption` output); None when no mention had ground-truth boxes."""
    hits = [w["grounded"] for words in grounded.values() for w in words if "grounded" in w]
    mass = [w["correctness"] for words in grounded.values() for w in words if "correctness" in w]
    return {"grounding_accuracy": float(np.mean(hits)) if hits else None,
            "attention_correctness": float(np.mean(mass)) if mass else None, "grounded_mentions": len(hits)}


def load_box_file(path: str | Path, words: ChairWords) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    """A Flickr30k-Entities-style box file -> image id -> [(object, box)].

    JSON ``{"format": "butd-grounding-boxes", "images": {"<image id>": [{"name": "dog", "box": [x1, y1, x2,
    y2]}, ...]}}``: each box named by a word of the CHAIR word list (its object is looked up) or an object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the box file: {type(e).__name__}", path,
                        f'give JSON {{"format": "{BOX_FORMAT}", "images": {{...}}}}', usage=True) from None
    if not isinstance(data, dict) or data.get("format") != BOX_FORMAT or not isinstance(data.get("images"), dict):
        raise UserError(f"not a grounding box file (no \"format\": \"{BOX_FORMAT}\" with an 'images' map)", path,
                        'give {"format": "butd-grounding-boxes", "images": {"ID": [{"name", "box"}]}}', usage=True)
    out: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for image_id, items in data["images"].items():
        boxes = []
        for it in items if isinstance(items, list) else [None]:
            try:
                name, box = str(it["name"]).lower(), tuple(float(v) for v in it["box"])
                if len(box) != 4:
                    raise ValueError("a box has 4 numbers")
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"broken box entry for image {image_id} ({type(e).__name__})", path,
                                'each entry is {"name": WORD, "box": [x1, y1, x2, y2]}', usage=True) from None
            boxes.append((words.category_object(name, str(path), "box name"), box))
        out[str(image_id)] = boxes
    return out
