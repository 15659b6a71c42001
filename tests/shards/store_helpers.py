"""Record factories and comparisons shared by the shards tests."""

import numpy as np

from butd.shards import scalar


def region_record(rng: np.random.Generator, k: int | None = None, dim: int = 32, labels: bool = False) -> dict:
    k = int(rng.integers(10, 40)) if k is None else k
    rec = {
        "boxes": rng.random((k, 4), dtype=np.float32) * 100,
        "features": rng.standard_normal((k, dim)).astype(np.float32),
        "num_boxes": scalar(k),
        "image_w": scalar(int(rng.integers(100, 900))),
        "image_h": scalar(int(rng.integers(100, 900))),
    }
    if labels:
        rec["objects_id"] = rng.integers(0, 1600, k).astype(np.int64)
        rec["objects_conf"] = rng.random(k, dtype=np.float32)
    return rec


def assert_records_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k
