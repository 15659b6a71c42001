"""A newcomer's extractor in one file: mean colour of each cell of a 2x2 grid (the test's dummy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ColourGridConfig:
    name: str = "colour-grid"
    mode: str = "grid"
    weights: str | None = None
    device: str = "auto"
    fp16: bool = False
    cells: int = 2


class ColourGrid:
    kind = "grid"
    weights_sha256 = None

    def __init__(self, cfg: ColourGridConfig) -> None:
        self.cfg, self.name = cfg, cfg.name

    def config_dict(self) -> dict[str, Any]:
        return {"cells": self.cfg.cells, "feature_dim": 3}

    def preprocess(self, image: np.ndarray) -> dict[str, Any]:
        return {"image": image, "image_w": image.shape[1], "image_h": image.shape[0]}

    def to(self, device: str) -> ColourGrid:
        return self

    def extract(self, batch, boxes=None):
        n = self.cfg.cells
        out = []
        for item in batch:
            img = item["image"].astype(np.float32) / 255.0
            rows = np.array_split(np.arange(img.shape[0]), n)
            cols = np.array_split(np.arange(img.shape[1]), n)
            feats = np.stack([img[r][:, c].reshape(-1, 3).mean(0) for r in rows for c in cols]).astype(np.float32)
            out.append({"features": feats, "grid_h": np.array(n, np.int32), "grid_w": np.array(n, np.int32),
                        "image_w": np.array(item["image_w"], np.int32), "image_h": np.array(item["image_h"], np.int32)})
        return out


def build(cfg: ColourGridConfig) -> ColourGrid:
    return ColourGrid(cfg)
