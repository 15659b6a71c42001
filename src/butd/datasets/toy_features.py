"""Oracle "region" feature store for the toy world: features made from ground truth, no CNN needed.

Each object becomes one region whose feature is [one-hot colour, one-hot shape, box / image size, scene slot,
noise], zero-padded to ``dim``, with N(0, noise^2) added to the informative part. The scene slot (number of
objects * 0.25, the same in every region of an image) stands in for the context that real region features
get from a CNN's large receptive field: without it the object count cannot be recovered from a softmax-
attended average when the number of background regions varies (1 object + 1 background and 2 + 2 give the
same attended mixture). 1-2 "background" regions (no colour, no shape, random box) are mixed in, and the
region order is shuffled per image so position in the list carries no information.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from butd.shards import ShardWriter, scalar

__all__ = ["N_NOISE_DIMS", "oracle_feature_dim", "oracle_vqa_world", "write_oracle_store"]

N_NOISE_DIMS = 8  # pure-noise slots after the signal part
COUNT_SCALE = 0.25  # scene-context slot = number of objects * COUNT_SCALE


def oracle_feature_dim(n_colours: int, n_shapes: int) -> int:
    """Width of the informative part: colours + shapes + 4 box coordinates + scene slot + noise slots."""
    return n_colours + n_shapes + 4 + 1 + N_NOISE_DIMS


def _region(
    colour: int | None,
    shape: int | None,
    box: np.ndarray,
    wh: tuple[int, int],
    n_objects: int,
    n_colours: int,
    n_shapes: int,
    dim: int,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    width = oracle_feature_dim(n_colours, n_shapes)
    feat = np.zeros(dim, dtype=np.float32)
    if colour is not None:
        feat[colour] = 1.0
    if shape is not None:
        feat[n_colours + shape] = 1.0
    w, h = wh
    feat[n_colours + n_shapes : n_colours + n_shapes + 4] = box / np.array([w, h, w, h], dtype=np.float32)
    feat[n_colours + n_shapes + 4] = n_objects * COUNT_SCALE
    feat[:width] += noise * rng.standard_normal(width).astype(np.float32)
    return feat


def _background_box(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    x1, y1 = rng.uniform(0, 0.6 * w), rng.uniform(0, 0.6 * h)
    x2, y2 = rng.uniform(x1 + 0.2 * w, w), rng.uniform(y1 + 0.2 * h, h)
    return np.array([x1, y1, x2, y2], dtype=np.float32)


def write_oracle_store(
    toy_root: str | Path, store_path: str | Path, dim: int = 64, seed: int = 0, noise: float = 0.1
) -> Path:
    """Write a region store for every image of ``toy_root/toy_world.json``; ids are ``str(image_id)``.

    Records: boxes float32 [k, 4] (pixels), features float32 [k, dim], num_boxes / image_w / image_h.
    Returns ``store_path``.
    """
    toy_root, store_path = Path(toy_root), Path(store_path)
    world = json.loads((toy_root / "toy_world.json").read_text(encoding="utf-8"))
    colours, shapes = list(world["colours"]), list(world["shapes"])
    need = oracle_feature_dim(len(colours), len(shapes))
    if dim < need:
        raise ValueError(f"dim={dim} is too small: the oracle features need at least {need}")
    extractor = {
        "name": "toy-oracle",
        "config": {"dim": dim, "seed": seed, "noise": noise, "colours": colours, "shapes": shapes},
        "weights_sha256": None,
    }
    source = {"toy_root": str(toy_root), "toy_config": world.get("config", {})}
    with ShardWriter(store_path, "region", extractor=extractor, source=source) as writer:
        for image in world["images"]:
            image_id = int(image["image_id"])
            rng = np.random.default_rng([seed, image_id])
            w, h = int(image["width"]), int(image["height"])
            regions = [(colours.index(o["colour"]), shapes.index(o["shape"]), np.asarray(o["box"], np.float32))
                       for o in image["objects"]]
            regions += [(None, None, _background_box(w, h, rng)) for _ in range(int(rng.integers(1, 3)))]
            rows = [(box, _region(c, s, box, (w, h), len(image["objects"]), len(colours), len(shapes), dim, noise,
                                  rng)) for c, s, box in regions]
            order = rng.permutation(len(rows))
            boxes = np.stack([rows[i][0] for i in order]).astype(np.float32)
            feats = np.stack([rows[i][1] for i in order]).astype(np.float32)
            writer.add(
                str(image_id),
                {
                    "boxes": boxes,
                    "features": feats,
                    "num_boxes": scalar(len(rows)),
                    "image_w": scalar(w),
                    "image_h": scalar(h),
                },
            )
    return store_path


def oracle_vqa_world(root: str | Path, n_images: int, dim: int = 64, seed: int = 0, noise: float = 0.1
                     ) -> dict[str, str | tuple[str, ...]]:
    """A toy world in ``root/toy`` and its oracle store in ``root/store``; returns the VQA v2 file paths
    (the fields of ``butd.train.vqa.VQAPaths``: features, questions, annotations, val_*)."""
    from butd.datasets.toy import ToyConfig, make_toy_world

    root = Path(root)
    make_toy_world(root / "toy", ToyConfig(n_images=n_images, seed=seed))
    write_oracle_store(root / "toy", root / "store", dim=dim, seed=seed, noise=noise)
    v = root / "toy" / "vqa"
    return {"features": str(root / "store"),
            "questions": (str(v / "v2_OpenEnded_mscoco_train2014_questions.json"),),
            "annotations": (str(v / "v2_mscoco_train2014_annotations.json"),),
            "val_questions": (str(v / "v2_OpenEnded_mscoco_val2014_questions.json"),),
            "val_annotations": (str(v / "v2_mscoco_val2014_annotations.json"),)}
