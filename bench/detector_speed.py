"""Seconds per image of the bua-r101 detector (random weights): per-image vs batched backbone, and
channels-last activations (the default) vs NCHW.

    PYTHONPATH=src python bench/detector_speed.py [--proposals 300] [--cpu-proposals 48] [--repeat 1]

Two 480x640 images (resized to 600x800 as the Caffe model does). "per-image" runs the backbone once
per image; "batched" stacks same-size images into one backbone call (the RoI heads are per image in
both). CPU always; CUDA too when available. CUDA runs the published RPN post-NMS top-k (300); the CPU
run uses ``--cpu-proposals`` (48) to stay short: the res5 head on the RoIs dominates CPU time (about
5 GFLOP per RoI), so CPU seconds/image scale roughly linearly with it. The layout rows run the same
batch with ``memory_format`` channels-last and NCHW, alternated ``--repeat`` times (medians).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from butd.extract.detector import BUTDExtractor


def timed(ex: BUTDExtractor, batch, batched: bool, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        if ex.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ex.extract(batch, batched=batched)
        if ex.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best / len(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proposals", type=int, default=300, help="RPN post-NMS top-k on CUDA (published: 300)")
    ap.add_argument("--cpu-proposals", type=int, default=48, help="RPN post-NMS top-k on CPU")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3)).astype(np.uint8).repeat(10, 0).repeat(10, 1)
              for _ in range(args.images)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = BUTDExtractor("random")
    batch = [ex.preprocess(im) for im in images]
    print(f"bua-r101, random weights, {len(batch)} images 480x640 -> {tuple(batch[0]['image'].shape[1:])}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for dev in devices:
        ex.to(dev)
        topk = args.cpu_proposals if dev == "cpu" else args.proposals
        ex.model.proposal_generator.cfg["post_nms_topk"] = topk
        ex.extract(batch[:1])  # warm-up (allocator, cudnn autotune)
        single = timed(ex, batch, batched=False, repeat=args.repeat)
        batched = timed(ex, batch, batched=True, repeat=args.repeat)
        print(f"{dev:5s} {topk:4d} proposals  per-image {single:8.3f} s/image   batched {batched:8.3f} s/image   "
              f"speed-up x{single / batched:5.2f}")
        layouts = {"channels_last": [], "nchw": []}
        for _ in range(max(args.repeat, 2)):
            for name in layouts:
                fmt = torch.channels_last if name == "channels_last" else torch.contiguous_format
                ex.model.memory_format = ex.model.roi_heads.memory_format = fmt
                layouts[name].append(timed(ex, batch, batched=True, repeat=1))
        ex.model.memory_format = ex.model.roi_heads.memory_format = torch.channels_last
        cl, nchw = (statistics.median(v) for v in layouts.values())
        print(f"{dev:5s} {topk:4d} proposals  batched, channels_last {cl:8.3f} s/image   NCHW {nchw:8.3f} s/image   "
              f"speed-up x{nchw / cl:5.2f}")


if __name__ == "__main__":
    main()
