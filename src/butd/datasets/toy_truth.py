"""The toy world's object ground truth in the layouts the evaluators read (see :mod:`butd.datasets.toy`).

* ``annotations/instances_{train,val}2014.json``: COCO instance annotations, one per drawn object, with
  its shape as the category and its box as COCO's [x, y, w, h] (what ``butd eval --instances`` reads for
  CHAIR and grounding);
* ``chair_words.json``: the CHAIR word list of the toy world (each shape is an object; plurals come from
  the suffix rules), in the format of :func:`butd.evaluate.chair.load_chair_words`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHAIR_WORDS_FILE", "toy_chair_words", "write_truth_files"]

CHAIR_WORDS_FILE = "chair_words.json"
_SUBSETS = ("train2014", "val2014")


def toy_chair_words(shapes: Sequence[str]) -> dict[str, Any]:
    """The toy world's CHAIR vocabulary: one object per shape, named by the shape."""
    return {"format": "butd-chair-words", "version": 1,
            "source": {"name": "toy world shapes", "objects": "butd.datasets.toy.SHAPES"},
            "objects": [[s] for s in shapes]}


def _dump(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
    return path


def write_truth_files(root: Path, images: Sequence[dict], shapes: Sequence[str], info: dict) -> dict[str, Path]:
    """Write the instance files and the CHAIR word list for the world's ``images`` (toy_world.json entries)."""
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(shapes)]
    cat_id = {s: i + 1 for i, s in enumerate(shapes)}
    files: dict[str, Path] = {}
    for subset in _SUBSETS:
        chosen = [im for im in images if im["file_path"].startswith(subset + "/")]
        annotations = []
        for im in chosen:
            for o in im["objects"]:
                x1, y1, x2, y2 = o["box"]
                annotations.append({"id": o["object_id"], "image_id": im["image_id"], "category_id": cat_id[o["shape"]],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        files[f"instances_{subset}"] = _dump(root / "annotations" / f"instances_{subset}.json", {
            "info": info, "licenses": [], "categories": categories, "annotations": annotations,
            "images": [{"id": im["image_id"], "file_name": Path(im["file_path"]).name, "width": im["width"],
                        "height": im["height"]} for im in chosen]})
    files["chair_words"] = _dump(root / CHAIR_WORDS_FILE, toy_chair_words(shapes))
    return files
