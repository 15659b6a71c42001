"""Dataset adapters: yield :class:`SourceItem` (image id, path, given boxes | None) from public layouts.

  coco       Karpathy ``dataset_coco.json`` (root/ or root/annotations/ or root/karpathy/); images at
             root/<filepath>/<filename>; id = cocoid
  flickr8k   ``dataset_flickr8k.json``; images in root/Flicker8k_Dataset, root/Flickr8k_Dataset, root/images
             or root/; id = file name stem
  flickr30k  ``dataset_flickr30k.json``; images in root/flickr30k-images, root/images or root/; id = stem
  vg         image_data.json (root/ or root/vg/); images in root/VG_100K*/ (or root/images/);
             id = image_id; boxes from objects.json (x, y, w, h -> x1y1x2y2)
  vqa        COCO images named by the VQA question files (``*questions*.json`` in root/, root/vqa/,
             root/Questions/); images in root/<subtype>/COCO_<subtype>_<id:012d>.jpg; id = COCO image id
  folder     every image file under root (recursive); id = relative path without extension, posix slashes
  toy        root/toy_world.json; id = image id; boxes = ground-truth objects
Given boxes can be replaced by a user JSON ``{image_id: [[x1, y1, x2, y2], ...]}`` (``load_boxes``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from butd.errors import UserError
from butd.registry import Entry, Registry

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "SOURCES", "SourceItem", "iter_source", "load_boxes", "with_boxes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class SourceItem:
    """One image to extract: ``boxes`` is float32 [k, 4] x1y1x2y2 in original pixels, or None."""

    image_id: str
    path: str
    boxes: np.ndarray | None = None


def _find(root: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise UserError(f"no {what} under the root (looked for {', '.join(names)})", root,
                    "check --root, or choose the --dataset whose layout it has", usage=True)


def _first_dir(root: Path, names: list[str]) -> Path:
    for name in names:
        if name and (root / name).is_dir():
            return root / name
    return root


def _read_json(path: Path) -> object:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _karpathy(root: Path, dataset: str) -> list[dict]:
    fname = f"dataset_{dataset}.json"
    path = _find(root, [fname, f"annotations/{fname}", f"karpathy/{fname}", f"data/{fname}"],
                 f"Karpathy split for {dataset}")
    data = _read_json(path)
    return data["images"] if isinstance(data, dict) else data


def _coco(root: Path) -> Iterator[SourceItem]:
    for img in _karpathy(root, "coco"):
        sub = img.get("filepath", "")
        yield SourceItem(str(img["cocoid"]), str(root / sub / img["filename"]))


def _flickr(root: Path, dataset: str) -> Iterator[SourceItem]:
    dirs = (["Flicker8k_Dataset", "Flickr8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "images"]
            if dataset == "flickr8k" else ["flickr30k-images", "flickr30k_images", "images"])
    img_dir = _first_dir(root, dirs)
    for img in _karpathy(root, dataset):
        yield SourceItem(Path(img["filename"]).stem, str(img_dir / img["filename"]))


def _boxes_xywh(objects: list[dict]) -> np.ndarray:
    rows = [[o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]] for o in objects if o.get("w", 0) > 0
            and o.get("h", 0) > 0]
    return np.asarray(rows, np.float32).reshape(-1, 4)


def _vg(root: Path, with_given: bool) -> Iterator[SourceItem]:
    base = _first_dir(root, ["vg", ""])
    meta = _read_json(_find(base, ["image_data.json"], "Visual Genome image_data.json"))
    dirs = sorted({*root.glob("VG_100K*"), *base.glob("VG_100K*")})
    dirs = dirs or [_first_dir(root, ["images", "vg/images"])]
    boxes: dict[int, np.ndarray] = {}
    if with_given:
        objs_file = base / "objects.json"
        if objs_file.is_file():
            boxes = {int(e["image_id"]): _boxes_xywh(e.get("objects", [])) for e in _read_json(objs_file)}
    for img in meta:
        iid = int(img.get("image_id", img.get("id", -1)))
        name = f"{iid}.jpg"
        path = next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)
        yield SourceItem(str(iid), str(path), boxes.get(iid))


def _vqa(root: Path) -> Iterator[SourceItem]:
    files = sorted({p for d in ("", "vqa", "Questions", "questions") if (root / d).is_dir()
                    for p in (root / d).glob("*questions*.json")})
    if not files:
        raise UserError("no VQA question files (*questions*.json) under the root or its vqa/", root,
                        "check --root, or choose the --dataset whose layout it has", usage=True)
    seen: set[str] = set()
    for qf in files:
        data = _read_json(qf)
        subtype = data.get("data_subtype") or next(
            (s for s in ("train2014", "val2014", "test-dev2015", "test2015") if s in qf.name), "")
        folder = "test2015" if subtype.startswith("test") else subtype
        img_dir = _first_dir(root, [folder, f"images/{folder}", f"coco/{folder}"])
        for q in data["questions"]:
            iid = str(int(q["image_id"]))
            if iid not in seen:
                seen.add(iid)
                yield SourceItem(iid, str(img_dir / f"COCO_{folder}_{int(iid):012d}.jpg"))


def _folder(root: Path) -> Iterator[SourceItem]:
    if not root.is_dir():
        raise UserError("not a directory", root, "pass the folder of images as --root", usage=True)
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            yield SourceItem(p.relative_to(root).with_suffix("").as_posix(), str(p))


def _toy(root: Path) -> Iterator[SourceItem]:
    world = _read_json(_find(root, ["toy_world.json"], "toy world"))
    for img in world["images"]:
        bx = np.asarray([o["box"] for o in img["objects"]], np.float32).reshape(-1, 4)
        yield SourceItem(str(img["image_id"]), str(root / img["file_path"]), bx)


# The builders of the SOURCES table: (root, boxes_mode) -> items.
def source_coco(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _coco(root)


def source_flickr8k(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _flickr(root, "flickr8k")


def source_flickr30k(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _flickr(root, "flickr30k")


def source_vg(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _vg(root, boxes_mode)


def source_vqa(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _vqa(root)


def source_folder(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _folder(root)


def source_toy(root: Path, boxes_mode: bool) -> Iterator[SourceItem]:
    return _toy(root)


_S = "butd.extract.sources:source_"
SOURCES = Registry("image source", {
    "coco": Entry(None, _S + "coco", "COCO 2014/2015 image folders (ids: the number in the file name)"),
    "flickr8k": Entry(None, _S + "flickr8k", "Flickr8k images (ids: file stems, as the Karpathy split)"),
    "flickr30k": Entry(None, _S + "flickr30k", "Flickr30k images (ids: file stems, as the Karpathy split)"),
    "vg": Entry(None, _S + "vg", "Visual Genome image_data.json (+ objects.json boxes in mode boxes)"),
    "vqa": Entry(None, _S + "vqa", "the COCO images named by VQA v2 question files"),
    "folder": Entry(None, _S + "folder", "every image under a folder (ids: relative paths without suffix)"),
    "toy": Entry(None, _S + "toy", "the embedded toy world (with its ground-truth boxes in mode boxes)"),
})
DATASETS = tuple(SOURCES.table)


def iter_source(dataset: str, root: str | Path, *, mode: str = "grid") -> Iterator[SourceItem]:
    """Items of ``dataset`` under ``root``; given boxes (vg, toy) are attached only in mode "boxes"."""
    boxes_mode = mode == "boxes"
    if dataset not in SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    for item in SOURCES.builder(dataset)(Path(root), boxes_mode):
        yield item if boxes_mode or item.boxes is None else SourceItem(item.image_id, item.path)


def load_boxes(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``{image_id: [[x1, y1, x2, y2], ...]}`` -> {id: float32 [k, 4]}; rejects malformed boxes."""
    data = _read_json(Path(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image ids to box lists")
    out: dict[str, np.ndarray] = {}
    for key, rows in data.items():
        arr = np.asarray(rows, np.float32).reshape(-1, 4) if rows else np.zeros((0, 4), np.float32)
        bad = len(arr) and (not np.isfinite(arr).all() or (arr[:, 2:] < arr[:, :2]).any())
        if bad:
            raise ValueError(f"{path}: image {key!r} has boxes that are not finite x1<=x2, y1<=y2")
        out[str(key)] = arr
    return out


def with_boxes(items: Iterator[SourceItem], boxes: dict[str, np.ndarray]) -> Iterator[SourceItem]:
    """Replace each item's given boxes with the user's (items without an entry get None)."""
    for item in items:
        yield SourceItem(item.image_id, item.path, boxes.get(item.image_id))
