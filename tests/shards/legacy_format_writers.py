"""Writers of the community formats, used by tests to make realistic inputs (DESIGN.md §3)."""

from __future__ import annotations

import base64
from pathlib import Path

import h5py
import numpy as np


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def random_images(n: int, *, dim: int = 2048, boxes: tuple[int, int] = (10, 100), seed: int = 0,
                  with_labels: bool = False) -> dict[str, dict]:
    """n images with integer sizes, float32 boxes inside them and float32 features."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        k = int(rng.integers(boxes[0], boxes[1] + 1))
        w, h = int(rng.integers(200, 1000)), int(rng.integers(200, 1000))
        x1 = rng.uniform(0, w * 0.6, k).astype(np.float32)
        y1 = rng.uniform(0, h * 0.6, k).astype(np.float32)
        x2 = (x1 + rng.uniform(1, w * 0.4, k)).astype(np.float32)
        y2 = (y1 + rng.uniform(1, h * 0.4, k)).astype(np.float32)
        img = {"image_w": w, "image_h": h, "boxes": np.stack([x1, y1, x2, y2], 1),
               "features": rng.standard_normal((k, dim)).astype(np.float32)}
        if with_labels:
            img["objects_id"] = rng.integers(0, 1600, k).astype(np.int64)
            img["objects_conf"] = rng.random(k, dtype=np.float32)
            img["attrs_id"] = rng.integers(0, 400, k).astype(np.int64)
            img["attrs_conf"] = rng.random(k, dtype=np.float32)
        out[str(100000 + i * 7)] = img
    return out


def pa_tsv_line(image_id: str, img: dict) -> str:
    return "\t".join([image_id, str(img["image_w"]), str(img["image_h"]), str(len(img["boxes"])),
                      b64(img["boxes"]), b64(img["features"])]) + "\n"


def write_pa_tsv(path: Path, images: dict[str, dict]) -> Path:
    with open(path, "w") as f:
        for image_id, img in images.items():
            f.write(pa_tsv_line(image_id, img))
    return path


def write_lxmert_tsv(path: Path, images: dict[str, dict]) -> Path:
    with open(path, "w") as f:
        for image_id, img in images.items():
            f.write("\t".join([image_id, str(img["image_h"]), str(img["image_w"]), b64(img["objects_id"]),
                               b64(img["objects_conf"]), b64(img["attrs_id"]), b64(img["attrs_conf"]),
                               str(len(img["boxes"])), b64(img["boxes"]), b64(img["features"])]) + "\n")
    return path


def write_hh_h5(path: Path, images: dict[str, dict]) -> dict[str, int]:
    """As bottom-up-attention-vqa's converter: float32 arithmetic on the boxes, 'f' datasets."""
    ids = list(images)
    k = len(images[ids[0]]["boxes"])
    d = images[ids[0]]["features"].shape[1]
    with h5py.File(path, "w") as f:
        feats = f.create_dataset("image_features", (len(ids), k, d), "f")
        bbs = f.create_dataset("image_bb", (len(ids), k, 4), "f")
        spat = f.create_dataset("spatial_features", (len(ids), k, 6), "f")
        for row, image_id in enumerate(ids):
            img = images[image_id]
            bb = img["boxes"]
            w, h = float(img["image_w"]), float(img["image_h"])
            bw, bh = bb[:, 2] - bb[:, 0], bb[:, 3] - bb[:, 1]
            sw, sh, sx, sy = bw / w, bh / h, bb[:, 0] / w, bb[:, 1] / h
            spat[row] = np.stack([sx, sy, sx + sw, sy + sh, sw, sh], axis=1)
            bbs[row] = bb
            feats[row] = img["features"]
    return {image_id: row for row, image_id in enumerate(ids)}


def write_npz_dir(root: Path, images: dict[str, dict], *, with_info: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for image_id, img in images.items():
        kw = {}
        if with_info:
            kw["info"] = {"image_id": image_id, "image_h": img["image_h"], "image_w": img["image_w"],
                          "num_boxes": len(img["boxes"]), "objects_id": img["objects_id"],
                          "objects_conf": img["objects_conf"], "attrs_id": img["attrs_id"],
                          "attrs_conf": img["attrs_conf"]}
        np.savez_compressed(root / image_id, x=img["features"], bbox=img["boxes"], num_bbox=len(img["boxes"]),
                            image_h=img["image_h"], image_w=img["image_w"], **kw)
    return root
