"""A newcomer's import format in one file: JSON lines {"image_id", "boxes", "features"} (the test's dummy)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from butd.shards.importers.common import Row
from butd.shards.spec import scalar


def read_jsonl(sources: list[Path], *, allow_pickle: bool = False, ids=None, progress: bool = False,
               skipped: list[str] | None = None) -> Iterator[Row]:
    for src in sources:
        for n, line in enumerate(Path(src).read_text().splitlines(), 1):
            obj = json.loads(line)
            boxes = np.asarray(obj["boxes"], np.float32).reshape(-1, 4)
            rec = {"boxes": boxes, "features": np.asarray(obj["features"], np.float32),
                   "num_boxes": scalar(len(boxes)), "image_w": scalar(obj["w"]), "image_h": scalar(obj["h"])}
            yield Row(str(obj["image_id"]), f"{src}:{n}", rec)
