"""`butd shards export` speed and memory: seconds per format against the least any export must do, writing
every record's feature and box bytes raw into one file (the baseline, measured in the same run), and the
peak Python heap (tracemalloc) at N and 3N images, which stays flat when the export streams.
Synthetic store: 36 boxes x 2048 float32 per image, with labels.
Usage: python bench/export_speed.py [--images 150] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from butd.shards import FeatureStore, ShardWriter, scalar
from butd.shards.exporters import EXPORT_FORMATS, export_store

K, D = 36, 2048
OUT = {"pa-tsv": "x.tsv", "lxmert-tsv": "x_obj36.tsv", "hh-h5": "x36.hdf5", "npz-dir": "npz", "rl-dirs": "rl"}


def make_store(path: Path, n: int) -> FeatureStore:
    rng = np.random.default_rng(0)
    with ShardWriter(path, "region", max_records=500) as w:
        for i in range(n):
            w.add(str(100000 + i), {
                "boxes": rng.random((K, 4), dtype=np.float32) * 500, "features": rng.random((K, D), dtype=np.float32),
                "num_boxes": scalar(K), "image_w": scalar(640), "image_h": scalar(480),
                "objects_id": rng.integers(0, 1600, K).astype(np.int64),
                "objects_conf": rng.random(K, dtype=np.float32),
                "attrs_id": rng.integers(0, 400, K).astype(np.int64), "attrs_conf": rng.random(K, dtype=np.float32)})
    return FeatureStore(path)


def raw_dump(store: FeatureStore, path: Path) -> None:
    with open(path, "wb") as f:
        for _, rec in store.items():
            f.write(rec["features"].tobytes())
            f.write(rec["boxes"].tobytes())
    path.unlink()


def export_once(store: FeatureStore, fmt: str, work: Path) -> None:
    out = work / OUT[fmt]
    export_store(fmt, store, out, progress=False)
    for p in work.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, large = make_store(tmp / "s", args.images), make_store(tmp / "l", 3 * args.images)
        mb = sum(s["bytes"] for s in small.manifest["shards"]) / 2**20
        work = tmp / "out"
        work.mkdir()
        times: dict[str, list[float]] = {"raw": [], **{f: [] for f in EXPORT_FORMATS.names()}}
        for _ in range(args.repeats):  # alternate the baseline and every format within each repeat
            for name in times:
                t0 = time.perf_counter()
                raw_dump(small, work / "raw.bin") if name == "raw" else export_once(small, name, work)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["raw"])
        print(f"{args.images} images, {K}x{D} float32 ({mb:.0f} MiB of shards); median of {args.repeats}; "
              f"baseline: raw dump of the feature and box bytes {base:.3f} s")
        for fmt in EXPORT_FORMATS.names():
            peaks = []
            for store in (small, large):
                tracemalloc.start()
                export_once(store, fmt, work)
                peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
                tracemalloc.stop()
            t = statistics.median(times[fmt])
            print(f"{fmt:11s} {t:7.2f} s  {mb / t:6.1f} MiB/s  x{t / base:5.1f} the raw dump   "
                  f"peak heap {peaks[0]:5.1f} MiB at {args.images}, {peaks[1]:5.1f} MiB at {3 * args.images} images")


if __name__ == "__main__":
    main()
