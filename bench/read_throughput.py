"""Random-access batch reads: butd store vs pa-tsv vs hh-h5 vs npz dir vs a RAM copy, same data, same run.

Prints images/s per reader and the ratios the foundation issue sets as goals:
store >= 10x TSV, >= 1x h5 and npz, within 3x of a memory copy; reader memory flat as the store grows.
Usage: python bench/read_throughput.py [--images 1000] [--boxes 36] [--dim 2048] [--batch 32] [--batches 60]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from butd.shards import FeatureStore, ShardWriter, scalar


def make_data(root: Path, n: int, k: int, d: int, seed: int = 0) -> np.ndarray:
    """Write the same n images in all four formats; return the features held in RAM."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, k, d), dtype=np.float32)
    boxes = (rng.random((n, k, 4), dtype=np.float32) * 500).astype(np.float32)
    (root / "npz").mkdir()
    with ShardWriter(root / "store", "region", max_records=500) as w, open(root / "f.tsv", "w") as tsv, \
            h5py.File(root / "f.h5", "w") as h5:
        h5f = h5.create_dataset("image_features", (n, k, d), "f")
        h5b = h5.create_dataset("image_bb", (n, k, 4), "f")
        for i in range(n):
            w.add(str(i), {"boxes": boxes[i], "features": feats[i], "num_boxes": scalar(k),
                           "image_w": scalar(640), "image_h": scalar(480)})
            tsv.write(f"{i}\t640\t480\t{k}\t{base64.b64encode(boxes[i].tobytes()).decode()}\t"
                      f"{base64.b64encode(feats[i].tobytes()).decode()}\n")
            h5f[i], h5b[i] = feats[i], boxes[i]
            np.savez_compressed(root / "npz" / str(i), x=feats[i], bbox=boxes[i], num_bbox=k, image_h=480, image_w=640)
    return feats


class TsvReader:
    """The most generous TSV reader: a line-offset index, then seek + decode per image."""

    def __init__(self, path: Path, k: int, d: int) -> None:
        self.f, self.k, self.d = open(path, "rb"), k, d
        self.offsets, pos = [], 0
        for line in self.f:
            self.offsets.append(pos)
            pos += len(line)

    def __call__(self, i: int) -> np.ndarray:
        self.f.seek(self.offsets[i])
        fields = self.f.readline().split(b"\t")
        return np.frombuffer(base64.b64decode(fields[5]), np.float32).reshape(self.k, self.d)


def readers(root: Path, feats: np.ndarray) -> dict:
    store = FeatureStore(root / "store")
    h5 = h5py.File(root / "f.h5", "r")["image_features"]
    _, k, d = feats.shape
    return {
        "store": lambda i: store[str(i)]["features"],
        "pa-tsv": TsvReader(root / "f.tsv", k, d),
        "hh-h5": lambda i: h5[i],
        "npz-dir": lambda i: np.load(root / "npz" / f"{i}.npz")["x"],
        "ram-copy": lambda i: feats[i],
    }


def time_reader(read, batches: list[np.ndarray]) -> float:
    """Images/s assembling each batch into one contiguous array, as a collate would."""
    read(int(batches[0][0]))  # warm-up (opens files)
    t0 = time.perf_counter()
    for b in batches:
        np.stack([read(int(i)) for i in b])
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def memory_probe(store: Path, n: int, batches: int, batch: int) -> dict:
    """Run in a fresh process: read random batches, report private (anonymous) and total RSS."""
    code = f"""
import json, numpy as np
from butd.shards import FeatureStore
s = FeatureStore({str(store)!r}); rng = np.random.default_rng(1)
for _ in range({batches}):
    np.stack([s[str(i)]["features"] for i in rng.integers(0, {n}, {batch})])
st = dict(line.split(':', 1) for line in open('/proc/self/status'))
print(json.dumps({{k: int(st[k].split()[0]) for k in ('VmRSS', 'RssAnon', 'RssFile')}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--boxes", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        print(f"writing {args.images} images x {args.boxes} x {args.dim} float32 in 4 formats ...", flush=True)
        feats = make_data(root, args.images, args.boxes, args.dim)
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, args.images, args.batch) for _ in range(args.batches)]
        rates = {name: time_reader(read, batches) for name, read in readers(root, feats).items()}
        for name, r in rates.items():
            print(f"{name:9s} {r:10.0f} images/s")
        s = rates["store"]
        print(f"ratio store / pa-tsv   {s / rates['pa-tsv']:.1f}x   (goal >= 10)")
        print(f"ratio store / hh-h5    {s / rates['hh-h5']:.2f}x   (goal >= 1)")
        print(f"ratio store / npz-dir  {s / rates['npz-dir']:.2f}x   (goal >= 1)")
        print(f"ratio ram-copy / store {rates['ram-copy'] / s:.2f}x   (goal <= 3)")
        small = root / "small"
        with ShardWriter(small, "region", max_records=500) as w:
            for i in range(args.images // 4):
                w.add(str(i), {"boxes": np.zeros((args.boxes, 4), np.float32), "features": feats[i],
                               "num_boxes": scalar(args.boxes), "image_w": scalar(640), "image_h": scalar(480)})
        m_small = memory_probe(small, args.images // 4, args.batches, args.batch)
        m_big = memory_probe(root / "store", args.images, args.batches, args.batch)
        print(f"reader memory, {args.images // 4} images: private {m_small['RssAnon'] / 1024:.1f} MiB, "
              f"total RSS {m_small['VmRSS'] / 1024:.1f} MiB")
        print(f"reader memory, {args.images} images: private {m_big['RssAnon'] / 1024:.1f} MiB, "
              f"total RSS {m_big['VmRSS'] / 1024:.1f} MiB")
        print(f"ratio private memory big / small {m_big['RssAnon'] / m_small['RssAnon']:.2f}x   (goal ~1: flat)")


if __name__ == "__main__":
    main()
