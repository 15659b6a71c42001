"""Pieces both tasks share: devices, the run's extractor on new images, images for reports."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from butd.errors import UserError
from butd.shards import read_manifest

__all__ = ["check_options", "extract_images", "geometry", "image_index", "image_roots", "run_extractor", "store_names",
           "write_outputs"]


def check_options(task: str, kind: str, options: dict[str, Any], model: str | None = None) -> None:
    """The options of `butd train` (``kind`` "train") or `butd eval`/`report` ("eval"): one of another task's
    is a usage error, and so is a missing required one. Each task module's ``TRAIN_OPTIONS`` / ``EVAL_OPTIONS``
    table is the source; options not in any table (features, epochs, device, ...) belong to every task."""
    from butd.tasks import TASKS, task_module

    table = f"{kind.upper()}_OPTIONS"
    mine = getattr(task_module(task), table)
    what = f"--model {model} is a {task} model" if model else f"a {task} {'model' if kind == 'train' else 'run'}"
    for other in TASKS.names():
        for key in getattr(task_module(other), table) if other != task else ():
            if key not in mine and options.get(key) not in (None, False, (), []):
                raise UserError(f"--{key.replace('_', '-')} is a {other} option", what,
                                f"drop it, or choose a {other} {'model' if kind == 'train' else 'run'}", usage=True)
    for key, required in mine.items() if kind == "train" else ():
        if required and not options.get(key):
            raise UserError(f"--{key.replace('_', '-')} is required to train a {task} model",
                            f"--model {model}" if model else task, f"pass --{key.replace('_', '-')} FILE",
                            usage=True)


def write_outputs(run_dir: Path, files: dict[str, Any]) -> None:
    """JSON files of an evaluation into the run directory, each atomically (temp file + rename)."""
    import json
    import os

    for name, obj in files.items():
        tmp = run_dir / f"{name}.tmp"
        try:
            tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
            os.replace(tmp, run_dir / name)
        finally:
            tmp.unlink(missing_ok=True)


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


