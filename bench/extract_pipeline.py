"""Extraction pipeline throughput: whole Ray extraction vs the bare model forward, and 2 vs 1 workers.

Generates ~64 JPEGs, then measures effnetlite0 images/s for
  bare      model forward on pre-decoded, preprocessed inputs (1 thread, this process)
  pipeline  run_extraction with 1 worker (decode tasks + model actor + store writes), after actors are ready
  scaling   run_extraction with 2 workers vs 1
and prints the ratios (goals: pipeline/bare >= 0.9, 2 workers / 1 worker >= 1.8 on 2 free cores).

Where the time goes: the CPU cost of one image's decode + preprocessing (``decode``) and of writing its record
(``write``) are measured alone, in this process, one thread; with the bare forward (``model``) they bound what
``cores`` cores can do: images/s <= cores / (model + decode + write), and <= workers / model. The workers'
share of the run spent in the model (the summary's ``busy_fraction``) and the model seconds per image inside
the pipeline (busy time / images) show whether actors waited for input or ran slower on shared cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from butd.extract.grid import GridConfig  # noqa: E402
from butd.extract.images import load_image  # noqa: E402
from butd.extract.registry import build_extractor, extractor_config  # noqa: E402
from butd.extract.runner import run_extraction  # noqa: E402
from butd.extract.sources import iter_source  # noqa: E402


def make_images(root: Path, n: int, seed: int = 0) -> None:
    """n smooth random RGB JPEGs of 320x240..400x300 (cheap to decode, like small photos)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(320, 401)), int(rng.integers(240, 301))
        small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / f"img{i:04d}.jpg", quality=90)


def bare_rate(root: Path, cfg: GridConfig, batch_size: int) -> float:
    """images/s of extractor.extract alone on pre-decoded inputs (one thread, after one warm-up batch)."""
    torch.set_num_threads(1)
    ex = build_extractor(cfg.name, cfg)
    items = list(iter_source("folder", root))
    prep = [ex.preprocess(load_image(it.path, min_side=cfg.image_size).array) for it in items]
    ex.extract(prep[:batch_size])
    t = time.perf_counter()
    for b in range(0, len(prep), batch_size):
        ex.extract(prep[b:b + batch_size])
    return len(prep) / (time.perf_counter() - t)


def decode_write_cost(root: Path, cfg: GridConfig, tmp: Path) -> tuple[float, float]:
    """(s per image to decode + preprocess, s per record to write into a store): one thread, this process."""
    from butd.shards import ShardWriter

    torch.set_num_threads(1)
    ex = build_extractor(cfg.name, cfg)
    prep = ex.preprocessor() if hasattr(ex, "preprocessor") else ex.preprocess
    items = list(iter_source("folder", root))
    min_side = getattr(prep, "draft_min_side", None)  # as decode_batch reads them
    t = time.process_time()
    decoded = [prep(load_image(it.path, min_side=min_side).array) for it in items]
    decode = (time.process_time() - t) / len(items)
    records = ex.extract(decoded[:8])
    t = time.perf_counter()
    with ShardWriter(tmp, ex.kind, max_records=16) as w:
        for i, it in enumerate(items):
            w.add(it.image_id, records[i % len(records)])
    return decode, (time.perf_counter() - t) / len(items)


def pipeline_run(root: Path, cfg: GridConfig, out: Path, workers: int, batch_size: int):
    s = run_extraction(iter_source("folder", root), cfg, out, workers=workers, threads=1, shard_size=16,
                       batch_size=batch_size, progress=False)
    assert s.written == s.total, s
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="repeats; medians are reported")
    args = ap.parse_args()
    cfg = extractor_config("effnetlite0", image_size=args.image_size)
    bares, ones, twos, costs, s1, s2 = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        make_images(root, args.images)
        for r in range(args.rounds):  # interleaved, so load from elsewhere hits every side alike
            bares.append(bare_rate(root, cfg, args.batch_size))
            costs.append(decode_write_cost(root, cfg, Path(tmp) / f"write-{r}"))
            s1.append(pipeline_run(root, cfg, Path(tmp) / f"w1-{r}", 1, args.batch_size))
            s2.append(pipeline_run(root, cfg, Path(tmp) / f"w2-{r}", 2, args.batch_size))
            ones.append(s1[-1].images_per_s)
            twos.append(s2[-1].images_per_s)
    bare, one, two = (float(np.median(v)) for v in (bares, ones, twos))
    runs = ", ".join(f"{b:.1f}/{o:.1f}/{t:.1f}" for b, o, t in zip(bares, ones, twos))
    print(f"effnetlite0 @{args.image_size}px, {args.images} JPEGs, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"rounds (bare / 1 worker / 2 workers img/s): {runs}")
    print(f"bare model forward      {bare:8.1f} img/s (1 thread, pre-decoded)")
    print(f"pipeline, 1 worker      {one:8.1f} img/s   ratio vs bare {one / bare:5.2f}  (goal >= 0.9)")
    print(f"pipeline, 2 workers     {two:8.1f} img/s   scaling 2/1   {two / one:5.2f}  (goal >= 1.8)")
    cores = os.cpu_count() or 1
    model = 1 / bare
    decode, write = (float(np.median([c[i] for c in costs])) for i in (0, 1))
    per_image = model + decode + write
    bound1, bound2 = min(1 / model, cores / per_image), min(2 / model, cores / per_image)
    print(f"\nwhere the time goes (CPU s per image, one thread): model {1000 * model:.1f} ms, decode + preprocess "
          f"{1000 * decode:.1f} ms, record write {1000 * write:.1f} ms")
    print(f"bound on {cores} cores: 1 worker {bound1:.1f} img/s, 2 workers {bound2:.1f} img/s "
          f"-> scaling at most {bound2 / bound1:.2f} (measured {two / one:.2f})")
    for name, runs_ in (("1 worker", s1), ("2 workers", s2)):
        s = runs_[int(np.argsort([x.images_per_s for x in runs_])[len(runs_) // 2])]  # the median run
        in_model = sum(s.busy_fraction) / s.images_per_s  # model s per image inside the pipeline
        print(f"{name:9s}: in the model {', '.join(f'{100 * f:.0f}%' for f in s.busy_fraction)} of the run; "
              f"{1000 * in_model:.1f} ms of model time per image ({in_model / model:.2f}x the bare forward); "
              f"peak RSS per worker {', '.join(f'{b / 2**20:.0f} MiB' for b in s.peak_rss_bytes)}")


if __name__ == "__main__":
    main()
