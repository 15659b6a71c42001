"""A trivial extractor for timing the Ray pipeline's own overhead: 10 boxes of the image's mean colour.

It is registered only inside the bench's private Ray workers (``register``, run by Ray as the workers'
``worker_process_setup_hook``), never in butd's table of this or any other process: the runner builds the
extractor by name in its model actors, so those processes must know the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NAME = "scale-null"
BOXES = 10
DIM = 16


@dataclass(frozen=True)
class NullConfig:
    name: str = NAME
    mode: str = "detect"
    weights: str | None = None
    device: str = "cpu"
    fp16: bool = False


def null_preprocess(image: np.ndarray) -> dict[str, Any]:
    """What the decode tasks send to the model actor: the mean colour and the size."""
    return {"mean": image.reshape(-1, 3).mean(0).astype(np.float32), "image_w": image.shape[1],
            "image_h": image.shape[0]}


class NullExtractor:
    kind = "region"
    weights_sha256 = None

    def __init__(self, cfg: NullConfig) -> None:
        self.cfg, self.name = cfg, cfg.name

    def config_dict(self) -> dict[str, Any]:
        return {"feature_dim": DIM, "boxes": BOXES}

    def preprocessor(self):
        return null_preprocess

    def preprocess(self, image: np.ndarray) -> dict[str, Any]:
        return null_preprocess(image)

    def to(self, device: str) -> NullExtractor:
        return self

    def extract(self, batch: list[dict[str, Any]], boxes=None) -> list[dict[str, np.ndarray]]:
        out = []
        for item in batch:
            w, h = int(item["image_w"]), int(item["image_h"])
            out.append({"boxes": np.tile(np.array([0, 0, w, h], np.float32), (BOXES, 1)),
                        "features": np.tile(np.resize(item["mean"], DIM), (BOXES, 1)),
                        "num_boxes": np.array(BOXES, np.int32), "image_w": np.array(w, np.int32),
                        "image_h": np.array(h, np.int32)})
        return out


def build(cfg: NullConfig) -> NullExtractor:
    return NullExtractor(cfg)


def register() -> None:
    """Ray worker setup hook: make ``scale-null`` known to this worker process's extractor registry."""
    from butd.extract.registry import EXTRACTORS
    from butd.registry import Entry

    EXTRACTORS.table.setdefault(NAME, Entry(f"{__name__}:NullConfig", f"{__name__}:build", "bench: mean colour"))
