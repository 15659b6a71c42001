"""Pieces both tasks share: devices, the run's extractor on new images, images for reports."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from butd.errors import UserError
from butd.shards import read_manifest

__all__ = ["extract_images", "geometry", "image_index", "image_roots", "resolve_device", "run_extractor", "store_names"]


def resolve_device(name: str | None = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; other names pass through after a check."""
    import torch

    name = name or "auto"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("no CUDA device is visible", name, "pass --device cpu (or auto)", usage=True)
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError("unknown device", name, "pass --device auto, cpu or cuda", usage=True)
    return name


def run_extractor(info: dict[str, Any]) -> dict[str, Any]:
    """The extractor a run's features came from (recorded in run.json from the store manifest)."""
    from butd.extract.registry import EXTRACTORS

    extractor = (info.get("store") or {}).get("extractor") or {}
    if extractor.get("name") not in EXTRACTORS or not isinstance(extractor.get("config"), dict):
        raise UserError(f"the run's features were made by {extractor.get('name')!r}, which cannot run on new images",
                        "run.json store.extractor",
                        "train on a store made by `butd extract` to caption or answer about new images")
    return extractor


def extract_images(images: list[Path], extractor: dict[str, Any], device: str,
                   warn: Callable[[str], None] | None = None) -> list[tuple[Path, dict]]:
    """(path, store record) for every readable image, through the run's extractor; the rest are reported."""
    from butd.extract.single import extract_files

    out = []
    for path, (rec, reason) in zip(images, extract_files(extractor, images, device=device,
                                                             weights_sha256=extractor.get("weights_sha256"))):
        if rec is None:
            if warn is not None:
                warn(f"{path}: skipped ({reason})")
        else:
            out.append((path, rec))
    return out


_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def image_index(roots: list[Path]) -> dict[str, Path]:
    """Map every image under the candidate roots by file stem and by the integer at its end (COCO names)."""
    index: dict[str, Path] = {}
    for root in roots:
        if root is None or not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in _IMAGE_EXT:
                index.setdefault(p.stem, p)
                m = re.search(r"(\d+)$", p.stem)
                if m:
                    index.setdefault(str(int(m.group(1))), p)
    return index


def image_roots(features: str, data_file: str, images_root: Path | None) -> list[Path]:
    source = read_manifest(features).get("source") or {}
    cands = [images_root, source.get("root"), source.get("toy_root"), Path(data_file).parent,
             Path(data_file).parent.parent]
    return [Path(c) for c in cands if c]


def geometry(rec: dict, k: int, names: Any = None) -> dict:
    """How to draw attention over the first `k` rows of a record: its grid, or its first `k` boxes with
    the detector's name of each (`names` from `butd.evaluate.region_names.find_names`; ids without)."""
    from butd.evaluate.region_names import box_labels

    if "grid_h" in rec:
        return {"grid": (int(rec["grid_h"]), int(rec["grid_w"]))}
    return {"boxes": np.array(rec["boxes"][:k]), "box_labels": box_labels(rec, names, k)}


def store_names(store_path: str | Path | None) -> Any:
    """The detector's object/attribute names for a store (manifest `labels` or vocab files), or None."""
    from butd.evaluate.region_names import find_names

    if store_path is None or not Path(store_path).is_dir():
        return None
    return find_names(store_path, read_manifest(store_path))


