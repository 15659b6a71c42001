"""Extract a few images in this process (no Ray): what `butd caption` / `butd answer` need."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from butd.extract.registry import build_extractor, extractor_config
from butd.extract.runner import decode_batch


def proposal_grid(width: int, height: int) -> np.ndarray:
    """Boxes for images that have none (given-boxes stores): the whole image plus 2x2 and 3x3 cells.

    Returns float32 [14, 4] x1y1x2y2 in pixels.
    """
    boxes = [[0.0, 0.0, float(width), float(height)]]
    for n in (2, 3):
        for r in range(n):
            for c in range(n):
                boxes.append([c * width / n, r * height / n, (c + 1) * width / n, (r + 1) * height / n])
    return np.asarray(boxes, dtype=np.float32)


def _size(data: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of the original image from a preprocessed item (grid nets or the detector)."""
    if "image_w" in data:
        return int(data["image_w"]), int(data["image_h"])
    h, w = data["orig_hw"]
    return int(w), int(h)


def extract_files(extractor: dict[str, Any], paths: list[str | Path], *, device: str = "cpu",
                  boxes: list[np.ndarray | None] | None = None,
                  weights_sha256: str | None = None) -> list[tuple[dict | None, str | None]]:
    """Run the extractor of a store manifest's ``extractor`` entry (``{"name", "config"}``) on `paths`.

    Returns (record, None) per readable image and (None, reason) per broken one. In "boxes" mode an
    image without given boxes gets `proposal_grid` boxes.
    """
    cfg = extractor_config(extractor["name"], extractor["config"], device=device)
    extractor = build_extractor(cfg.name, cfg)
    if weights_sha256 and extractor.weights_sha256 and extractor.weights_sha256 != weights_sha256:
        warnings.warn(f"{cfg.name}: weights sha256 {extractor.weights_sha256[:12]}… differ from the store's "
                      f"{weights_sha256[:12]}…: features will not match what the model was trained on",
                      stacklevel=2)
    prep = extractor.preprocessor() if hasattr(extractor, "preprocessor") else extractor.preprocess
    given = boxes or [None] * len(paths)
    decoded = decode_batch([(str(i), str(p), b) for i, (p, b) in enumerate(zip(paths, given))], prep)
    out: list[tuple[dict | None, str | None]] = []
    for _, data, b, reason in decoded:
        if data is None:
            out.append((None, reason))
            continue
        if cfg.mode == "boxes" and b is None:
            b = proposal_grid(*_size(data))
        records = extractor.extract([data], [b] if cfg.mode == "boxes" else None)
        out.append((records[0], None))
    return out
