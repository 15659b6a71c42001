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
    t, c = time.perf_counter(), time.process_time()
    for b in range(0, len(prep), batch_size):
        ex.extract(prep[b:b + batch_size])
    return len(prep) / (time.perf_counter() - t), (time.process_time() - c) / len(prep)


class CpuSampler:
    """CPU seconds that this process and its descendants (Ray's daemons, model actors, decode workers) use
    while it runs, by kind: /proc/<pid>/stat utime + stime, sampled every ``every`` s by a thread (the last
    moments of a process that exits between samples are missed). Unlike wall time, this does not depend on
    what other jobs on the machine do."""

    @staticmethod
    def kind_of(comm: str, cmd: str) -> str:
        if comm in ("raylet", "gcs_server") or cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            return "ray daemons"
        if cmd.startswith("ray::ModelWorker"):
            return "model actors"
        if cmd.startswith("ray::"):  # decode_batch tasks, or idle between them
            return "decode workers"
        if "site-packages/ray/" in cmd:  # dashboard, log monitor, a worker still starting
            return "ray daemons" if "default_worker.py" not in cmd else "decode workers"
        return "other"

    def __init__(self, every: float = 0.25) -> None:
        import threading

        self.every, self.cpu, self.kind, self.base = every, {}, {}, {}
        self.window: dict[int, float] | None = None  # CPU when a model actor first ran a batch
        self.window_t = self.end_t = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _scan(self) -> None:
        tick, procs = os.sysconf("SC_CLK_TCK"), {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                head, tail = stat.read_text().rsplit(")", 1)
                f = tail.split()
                procs[int(stat.parent.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick, head.split("(", 1)[1])
            except (OSError, ValueError, IndexError):
                continue
        mine, grew = {os.getpid()}, True
        while grew:
            new = {pid for pid, (ppid, _, _) in procs.items() if ppid in mine} - mine
            mine |= new
            grew = bool(new)
        started = False
        for pid in mine:
            self.base.setdefault(pid, procs[pid][1] if not self.cpu else 0.0)
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), procs[pid][1])
            kind = self.kind.get(pid)  # a worker may become an actor; an actor says when it first runs a batch
            if kind in (None, "decode workers", "other") or (kind == "model actors" and self.window is None):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if cmd and kind != "model actors":  # empty while a process starts or exits: classify it later
                    self.kind[pid] = "driver" if pid == os.getpid() else self.kind_of(procs[pid][2], cmd)
                started |= cmd.startswith("ray::ModelWorker.run")
        if started and self.window is None:  # start-up is over: the steady state is measured from here
            self.window, self.window_t = dict(self.cpu), time.perf_counter()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._scan()

    def __enter__(self) -> CpuSampler:
        self._scan()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()
        self.end_t = time.perf_counter()

    def by_kind(self, steady: bool = False) -> dict[str, float]:
        """CPU s by kind over the whole run, or (``steady``) from the first model batch to the end."""
        base = self.window if steady and self.window is not None else self.base
        out: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            kind = self.kind.get(pid, "other")
            out[kind] = out.get(kind, 0.0) + cpu - base.get(pid, 0.0)
        return out


def _bare_worker(root: str, cfg: GridConfig, batch_size: int, barrier, out) -> None:
    """One of N processes running the bare forward at the same time (started together by ``barrier``)."""
    torch.set_num_threads(1)
    ex = build_extractor(cfg.name, cfg)
    prep = [ex.preprocess(load_image(it.path, min_side=cfg.image_size).array) for it in iter_source("folder", root)]
    ex.extract(prep[:batch_size])
    barrier.wait()
    t = time.perf_counter()
    for b in range(0, len(prep), batch_size):
        ex.extract(prep[b:b + batch_size])
    out.put(len(prep) / (time.perf_counter() - t))


def parallel_bare_rate(root: Path, cfg: GridConfig, batch_size: int, n: int) -> float:
    """Images/s of n processes each running the bare forward on its own core at once, no Ray (summed): what
    the machine itself gives n model workers, the ceiling of the pipeline's n-worker rate."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_bare_worker, args=(str(root), cfg, batch_size, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


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
    """(Summary, CPU ms per image by kind of process in the steady state: from the first model batch on,
    divided by the images the run's rate gives for that span; shard writes and actor shutdown included)."""
    with CpuSampler() as cpu:
        s = run_extraction(iter_source("folder", root), cfg, out, workers=workers, threads=1, shard_size=16,
                           batch_size=batch_size, progress=False)
    assert s.written == s.total, s
    images = max(s.images_per_s * (cpu.end_t - cpu.window_t), 1.0)
    return s, {k: 1000 * v / images for k, v in cpu.by_kind(steady=True).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="repeats; medians are reported")
    args = ap.parse_args()
    cfg = extractor_config("effnetlite0", image_size=args.image_size)
    bares, ones, twos, costs, s1, s2, par = [], [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        make_images(root, args.images)
        for r in range(args.rounds):  # interleaved, so load from elsewhere hits every side alike
            bares.append(bare_rate(root, cfg, args.batch_size))
            costs.append(decode_write_cost(root, cfg, Path(tmp) / f"write-{r}"))
            par.append(parallel_bare_rate(root, cfg, args.batch_size, 2))
            s1.append(pipeline_run(root, cfg, Path(tmp) / f"w1-{r}", 1, args.batch_size))
            s2.append(pipeline_run(root, cfg, Path(tmp) / f"w2-{r}", 2, args.batch_size))
            ones.append(s1[-1][0].images_per_s)
            twos.append(s2[-1][0].images_per_s)
    bare_cpu = float(np.median([b[1] for b in bares]))
    bares = [b[0] for b in bares]
    bare, one, two = (float(np.median(v)) for v in (bares, ones, twos))
    runs = ", ".join(f"{b:.1f}/{o:.1f}/{t:.1f}" for b, o, t in zip(bares, ones, twos))
    print(f"effnetlite0 @{args.image_size}px, {args.images} JPEGs, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"rounds (bare / 1 worker / 2 workers img/s): {runs}")
    print(f"bare model forward      {bare:8.1f} img/s (1 thread, pre-decoded)")
    print(f"pipeline, 1 worker      {one:8.1f} img/s   ratio vs bare {one / bare:5.2f}  (goal >= 0.9)")
    print(f"pipeline, 2 workers     {two:8.1f} img/s   scaling 2/1   {two / one:5.2f}  (goal >= 1.8)")
    cores = os.cpu_count() or 1
    decode, write = (float(np.median([c[i] for c in costs])) for i in (0, 1))
    print(f"\nwhere the time goes, CPU per image measured alone (one thread): model {1000 * bare_cpu:.1f} ms, "
          f"decode + preprocess {1000 * decode:.1f} ms, record write {1000 * write:.1f} ms -> on {cores} cores "
          f"2 workers can reach at most {min(2.0, cores * bare_cpu / (bare_cpu + decode + write)):.2f}x one")
    par2 = float(np.median(par))
    print(f"the machine: 2 bare forwards in 2 processes at once (no Ray, no decode) {par2:.1f} img/s = "
          f"{par2 / bare:.2f}x one in the same round (1.0 = the second core gave nothing, 2.0 = all of it)")
    steady = {}
    for name, runs_ in (("1 worker", s1), ("2 workers", s2)):
        s, cpu = runs_[int(np.argsort([x[0].images_per_s for x in runs_])[len(runs_) // 2])]  # the median run
        steady[s.workers] = cpu
        in_model = sum(s.busy_fraction) / s.images_per_s  # model s per image inside the pipeline
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        print(f"{name:9s}: in the model {', '.join(f'{100 * f:.0f}%' for f in s.busy_fraction)} of the run "
              f"({1000 * in_model:.1f} ms wall per image); CPU ms per image once running: "
              f"{sum(cpu.values()):.1f} = {parts} -> {cores} cores could do {1000 * cores / sum(cpu.values()):.1f} "
              f"img/s; peak RSS per worker {', '.join(f'{b / 2**20:.0f} MiB' for b in s.peak_rss_bytes)}")
    model1, total2 = steady[1].get("model actors", 0.0), sum(steady[2].values())
    print(f"CPU bound on the 2-worker speed-up, {cores} free cores: cores x (1 worker's model ms) / (2 workers' "
          f"total ms per image) = {min(2.0, cores * model1 / max(total2, 1e-9)):.2f} (measured {two / one:.2f}); "
          "below it, the cores were not all ours (other jobs) or two forwards at once slow each other "
          "(the 2-process row)")


if __name__ == "__main__":
    main()
