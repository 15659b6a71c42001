"""butd on one CUDA GPU, one unattended run of under 8 minutes: speed and peak GPU memory of every stage.

    python bench/gpu.py --out gpu.json                  # gpu.json after every measurement, gpu.md at the end
    python bench/gpu.py --dry-run --out /tmp/gpu.json   # every stage for one step on CPU, tiny sizes (CI)

Stages, in this order (each guarded: a failure is recorded and the next stage still runs):

1. ``detector``: ``bua-r101`` (``BUTDExtractor.extract``, RPN top 300, the default 10-100-box rule) on the
   shipped photos resized to 640x480 (one 600x800 input size, so a batch shares one backbone call):
   images/s for fp32 / fp16 x batch 1 / 4, channels-last activations (the default) and, at batch 4, NCHW.
   **Random weights: speed only** (with them the rule keeps its minimum of 10 boxes; the cost is in the
   300 proposals every image has, not in the kept boxes).
2. ``caption``: Up-Down (``configs/updown.yaml``) XE and SCST steps/s at 50 images x 5 captions (SCST: 5
   samples, greedy baseline, as the config), 36x2048 regions, vocabulary 10,000: forward, loss, backward,
   the config's clipping, Adam.
3. ``vqa``: every ``configs/vqa*.yaml``: questions/s of a training step at batch 512 (36x2048 regions,
   3,129 answers, 20,000 words, 14 tokens), with its optimiser and clipping.
4. ``pipeline``: ``run_extraction`` (Ray, decode tasks, one model actor on the GPU, store writes) on 200 JPEG
   copies of the shipped photos at their own sizes, bua-r101 random weights; images/s and each worker's
   peak RSS and ``torch.cuda.max_memory_allocated`` (the extraction summary's fields).

Every measurement resets ``torch.cuda`` peak statistics first and reports max allocated / reserved MiB.
``--budget-s`` (default 420) bounds the whole run: each stage gets a share, measurements stop early when
their share is spent (fewer steps, recorded), and a hard alarm at budget + 60 s ends whatever still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHARES = {"detector": 0.40, "caption": 0.22, "vqa": 0.13, "pipeline": 0.25}
MIN_STAGE_S = 15.0  # what a stage needs at least; later stages keep this much each


class HardLimit(Exception):
    """The alarm at budget + grace went off."""


@dataclasses.dataclass
class Ctx:
    device: torch.device
    dry: bool
    budget_s: float
    t0: float = dataclasses.field(default_factory=time.monotonic)
    tmp: Path = Path(".")

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def stage_deadline(self, name: str) -> float:
        later = list(SHARES)[list(SHARES).index(name) + 1:]
        span = min(SHARES[name] * self.budget_s, self.left() - MIN_STAGE_S * len(later))
        return time.monotonic() + max(span, 1.0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Recorder:
    """Results so far, rewritten atomically (temp + rename) after every row: a killed run keeps them."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.md = out, out.with_suffix(".md")
        self.data: dict[str, Any] = {"meta": meta, "stages": {}}

    def stage(self, name: str, status: str, **extra: Any) -> None:
        self.data["stages"].setdefault(name, {"rows": []}).update(status=status, **extra)
        self.save()

    def row(self, name: str, row: dict[str, Any]) -> None:
        self.data["stages"].setdefault(name, {"rows": [], "status": "running"})["rows"].append(row)
        print(f"  [{name}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        self.save()

    def save(self) -> None:
        for path, text in ((self.out, json.dumps(self.data, indent=1)), (self.md, markdown(self.data))):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def memory_reset(ctx: Ctx) -> None:
    if ctx.device.type == "cuda":
        ctx.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)


def memory_peak(ctx: Ctx) -> dict[str, float]:
    if ctx.device.type == "cuda":
        ctx.sync()
        return {"max_allocated_mib": torch.cuda.max_memory_allocated(ctx.device) / 2**20,
                "max_reserved_mib": torch.cuda.max_memory_reserved(ctx.device) / 2**20}
    import resource  # CPU (dry run): the process's peak so far, not resettable

    return {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def timed_steps(ctx: Ctx, step: Callable[[], Any], deadline: float, warmup: int = 2, steps: int = 20
                ) -> list[float]:
    """Seconds of each timed call of ``step`` (synchronised); warm-up calls first; at least one timed call,
    then as many of ``steps`` as fit before ``deadline``."""
    for _ in range(0 if ctx.dry else warmup):
        step()
    times: list[float] = []
    while len(times) < (1 if ctx.dry else steps) and (not times or time.monotonic() < deadline):
        ctx.sync()
        t = time.perf_counter()
        step()
        ctx.sync()
        times.append(time.perf_counter() - t)
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    return {"steps": len(times), "median_s": statistics.median(times), "min_s": min(times)}


def shipped(ctx: Ctx) -> list[np.ndarray]:
    from butd.demo import shipped_photos
    from butd.extract.images import load_image

    paths = shipped_photos(ctx.tmp / "shipped")
    if not paths:
        raise RuntimeError("no shipped photos (install the [dev] extras: matplotlib, scikit-image, scikit-learn)")
    return [load_image(p).array for p in paths]


# -- 1. detector ---------------------------------------------------------------------------------------
def stage_detector(ctx: Ctx, rec: Recorder) -> None:
    from PIL import Image

    from butd.extract.detector import BUTDExtractor

    size = (160, 120) if ctx.dry else (640, 480)
    photos = [np.asarray(Image.fromarray(p).resize(size, Image.BILINEAR)) for p in shipped(ctx)]
    small = {"rpn": {"post_nms_topk": 2}, "test_scale": 96, "test_max_size": 160} if ctx.dry else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose: speed only
        ex = BUTDExtractor("random", device=ctx.device, **small)
    prepped = [ex.preprocess(p) for p in photos]
    runs = [(False, 1, True), (False, 4, True), (True, 1, True), (True, 4, True), (False, 4, False), (True, 4, False)]
    if ctx.dry:  # both precisions, layouts and a batch, in two steps
        runs = [(False, 1, True), (True, 2, False)]
    deadline = ctx.stage_deadline("detector")
    for k, (fp16, batch, channels_last) in enumerate(runs):
        if time.monotonic() > deadline:
            rec.row("detector", {"fp16": fp16, "batch": batch, "skipped": "budget"})
            continue
        ex.fp16 = fp16
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ex.model.memory_format = ex.model.roi_heads.memory_format = fmt
        groups = [[prepped[(i + j) % len(prepped)] for j in range(batch)] for i in range(len(prepped))]
        kept: list[int] = []

        def step(groups=groups, kept=kept, it=iter(range(10**9))) -> None:
            out = ex.extract(groups[next(it) % len(groups)])
            kept.extend(int(r["num_boxes"]) for r in out)

        memory_reset(ctx)
        sub = time.monotonic() + (deadline - time.monotonic()) / (len(runs) - k)
        try:  # one setting failing (e.g. out of memory) leaves the others to measure
            s = _summary(timed_steps(ctx, step, sub, warmup=3, steps=30))
        except Exception as e:
            if isinstance(e, HardLimit):
                raise
            rec.row("detector", {"fp16": fp16, "batch": batch, "skipped": f"{type(e).__name__}: {e}"[:300]})
            memory_reset(ctx)
            continue
        rec.row("detector", {"precision": "fp16" if fp16 else "fp32", "batch": batch,
                             "layout": "channels_last" if channels_last else "nchw",
                             "images_per_s": batch / s["median_s"], "ms_per_image": 1000 * s["median_s"] / batch,
                             "boxes_mean": float(np.mean(kept)), "proposals": ex.model.proposal_generator.cfg[
                                 "post_nms_topk"], **s, **memory_peak(ctx)})
    ex.model.memory_format = ex.model.roi_heads.memory_format = torch.channels_last


def _clip(model: torch.nn.Module, loop_cfg: Any) -> None:
    params = [p for p in model.parameters() if p.grad is not None]
    if loop_cfg.grad_clip > 0 and loop_cfg.clip_mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, loop_cfg.grad_clip)
    elif loop_cfg.grad_clip > 0 and loop_cfg.clip_mode == "value":
        torch.nn.utils.clip_grad_value_(params, loop_cfg.grad_clip)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# -- 2. caption ----------------------------------------------------------------------------------------
def stage_caption(ctx: Ctx, rec: Recorder) -> None:
    from butd.datasets.captions import CaptionDataset, CaptionImage, DataConfig, collate_captions
    from butd.datasets.vocab import Vocab
    from butd.datasets.vqa import synthetic_record
    from butd.evaluate.cider import CiderD
    from butd.models.registry import build_caption_model
    from butd.shards import FeatureStore, ShardWriter
    from butd.train.caption import load_caption_config
    from butd.train.scst import ScstObjective, reward_refs

    cfg = load_caption_config(REPO / "configs" / "updown.yaml")
    images_n, per, k, d, v = (2, 5, 4, 16, 60) if ctx.dry else (50, 5, 36, 2048, 10_000)
    model_cfg = {**cfg.model, **({"embed_dim": 16, "hidden_dim": 16, "att_dim": 8} if ctx.dry else {})}
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(v - 4)]  # + the 4 specials = v
    with ShardWriter(ctx.tmp / "caption_store", "region", max_records=images_n + 1) as w:
        for i in range(images_n):
            w.add(str(i), synthetic_record(k, d, rng))
    store = FeatureStore(ctx.tmp / "caption_store")
    images = [CaptionImage(str(i), "train", tuple(tuple(rng.choice(words, int(rng.integers(9, 17))))
                                                  for _ in range(per)), ("",) * per) for i in range(images_n)]
    vocab = Vocab.build([words] + [t for im in images for t in im.tokens], min_count=1)
    data = dataclasses.replace(cfg.data, min_count=1)
    if "captions_per_image" in {f.name for f in dataclasses.fields(DataConfig)}:  # image-major batches
        data = dataclasses.replace(data, captions_per_image=per)
    xe_ds = CaptionDataset(images, store, vocab, data)
    xe_batch = _to(collate_captions([xe_ds[i] for i in range(len(xe_ds))]), ctx.device)
    torch.manual_seed(0)
    model = build_caption_model(cfg.model_name, len(vocab), d, model_cfg).to(ctx.device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.xe.lr)
    deadline = ctx.stage_deadline("caption")

    def xe_step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(model(xe_batch), xe_batch)["loss"].backward()
        _clip(model, cfg.xe)
        opt.step()

    memory_reset(ctx)
    s = _summary(timed_steps(ctx, xe_step, time.monotonic() + (deadline - time.monotonic()) / 2, steps=20))
    rec.row("caption", {"measure": "updown XE", "images": images_n, "captions": int(xe_batch["captions"].shape[0]),
                        "image_major": "image_index" in xe_batch, "parameters": params,
                        "steps_per_s": 1 / s["median_s"], **s, **memory_peak(ctx)})

    scst_ds = CaptionDataset(images, store, vocab, data, per_caption=False)
    sc_batch = _to(collate_captions([scst_ds[i] for i in range(len(scst_ds))]), ctx.device)
    scorer = CiderD(reward_refs([im.refs for im in images], cfg.scst_objective.reward_eos))
    objective = ScstObjective(model, scorer, vocab, cfg.scst_objective).train()
    opt2 = torch.optim.Adam(model.parameters(), lr=cfg.scst.lr)

    def scst_step() -> None:
        opt2.zero_grad(set_to_none=True)
        objective(sc_batch)["loss"].backward()
        _clip(model, cfg.scst)
        opt2.step()

    memory_reset(ctx)
    s = _summary(timed_steps(ctx, scst_step, deadline, warmup=1, steps=10))
    so = cfg.scst_objective
    rec.row("caption", {"measure": f"updown SCST ({so.samples} samples, {so.baseline} baseline, {so.max_len} tokens)",
                        "images": images_n, "captions": images_n * so.samples, "image_major": True,
                        "parameters": params, "steps_per_s": 1 / s["median_s"], **s, **memory_peak(ctx)})


# -- 3. vqa --------------------------------------------------------------------------------------------
def stage_vqa(ctx: Ctx, rec: Recorder) -> None:
    from butd.models.registry import MODELS
    from butd.models.updown_vqa import vqa_loss
    from butd.train.vqa import OPTIMIZERS, load_config

    b, k, d, answers, words, q = (4, 4, 16, 7, 30, 5) if ctx.dry else (512, 36, 2048, 3129, 20_000, 14)
    configs = sorted((REPO / "configs").glob("vqa*.yaml"))
    deadline = ctx.stage_deadline("vqa")
    gen = torch.Generator().manual_seed(0)
    batch = _to({"tokens": torch.randint(1, words, (b, q), generator=gen),
                 "features": torch.randn(b, k, d, generator=gen).relu(), "mask": torch.ones(b, k, dtype=torch.bool),
                 "target": (torch.rand(b, answers, generator=gen) > 0.999).float()}, ctx.device)
    for n, path in enumerate(configs):
        cfg = load_config(path)
        model_cfg = cfg.model
        if ctx.dry:
            small = {f: 8 for f in ("word_dim", "hidden_dim", "attention_dim", "joint_dim", "classifier_dim")
                     if hasattr(model_cfg, f)}
            model_cfg = dataclasses.replace(model_cfg, **small)
        torch.manual_seed(0)
        model = MODELS.builder(cfg.model_name)(words, answers, d, model_cfg, None).to(ctx.device).train()
        opt = OPTIMIZERS[cfg.optimizer]([p for p in model.parameters() if p.requires_grad], lr=cfg.loop.lr,
                                        weight_decay=cfg.weight_decay)

        def step(model=model, opt=opt, cfg=cfg) -> None:
            opt.zero_grad(set_to_none=True)
            vqa_loss(model(batch)["logits"], batch["target"]).backward()
            _clip(model, cfg.loop)
            opt.step()

        memory_reset(ctx)
        sub = time.monotonic() + (deadline - time.monotonic()) / (len(configs) - n)
        s = _summary(timed_steps(ctx, step, sub, steps=20))
        rec.row("vqa", {"measure": f"{cfg.model_name} {path.name}", "batch": b, "optimizer": cfg.optimizer,
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "questions_per_s": b / s["median_s"], **s, **memory_peak(ctx)})
        del model, opt


# -- 4. pipeline ---------------------------------------------------------------------------------------
def stage_pipeline(ctx: Ctx, rec: Recorder) -> None:
    from PIL import Image

    from butd.extract.registry import extractor_config
    from butd.extract.runner import run_extraction
    from butd.extract.sources import iter_source

    n = 4 if ctx.dry else 200
    root = ctx.tmp / "pipeline_images"
    root.mkdir()
    photos = shipped(ctx)
    for i in range(n):
        Image.fromarray(photos[i % len(photos)]).save(root / f"img{i:04d}.jpg", quality=90)
    if ctx.dry:  # the same Ray pipeline with a net that runs in seconds on CPU
        cfg, extra = extractor_config("effnetlite0", image_size=64, device="cpu"), {"threads": 1, "batch_size": 2}
    else:
        cfg, extra = extractor_config("bua-r101", weights="random", device=str(ctx.device)), {"workers": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = run_extraction(iter_source("folder", root), cfg, ctx.tmp / "pipeline_store", progress=False, **extra)
    rec.row("pipeline", {"extractor": cfg.name, "images": s.total, "written": s.written, "workers": s.workers,
                         "images_per_s": s.images_per_s, "elapsed_s": s.elapsed_s,
                         "worker_peak_rss_mib": [b / 2**20 for b in s.peak_rss_bytes],
                         "worker_cuda_max_allocated_mib": [b / 2**20 for b in s.cuda_max_allocated_bytes],
                         "worker_busy_fraction": s.busy_fraction})


STAGES: dict[str, Callable[[Ctx, Recorder], None]] = {
    "detector": stage_detector, "caption": stage_caption, "vqa": stage_vqa, "pipeline": stage_pipeline}


def run_stages(ctx: Ctx, rec: Recorder, stages: dict[str, Callable[[Ctx, Recorder], None]]) -> int:
    """Run each stage in its own folder under ``ctx.tmp``; a failing stage is recorded (with its error) and
    the next one runs. Returns the number of failed stages."""
    failed = 0
    for name in stages:
        rec.stage(name, "pending")
    for name, fn in stages.items():
        if ctx.left() < (1.0 if ctx.dry else MIN_STAGE_S):
            rec.stage(name, "skipped", error="budget spent")
            continue
        print(f"== {name} ({ctx.left():.0f} s of the budget left)", flush=True)
        t = time.monotonic()
        (ctx.tmp / name).mkdir()
        try:
            fn(dataclasses.replace(ctx, tmp=ctx.tmp / name), rec)
            rec.stage(name, "ok", elapsed_s=round(time.monotonic() - t, 1))
        except Exception as e:  # one stage's failure must not lose the others' numbers
            failed += 1
            traceback.print_exc()
            rec.stage(name, "error", error=f"{type(e).__name__}: {e}"[:500], elapsed_s=round(time.monotonic() - t, 1))
            with contextlib.suppress(Exception):
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
    return failed


def markdown(data: dict[str, Any]) -> str:
    """The BENCHMARKS.md table: one line per measurement."""
    m = data["meta"]
    lines = [f"Measured {m['date']} on {m['gpu']} ({m['gpu_memory_gib']} GiB), {m['cpus']} CPUs, torch {m['torch']}, "
             f"CUDA {m['cuda']}, cuDNN {m['cudnn']}; `python bench/gpu.py` (budget {m['budget_s']:.0f} s"
             f"{', dry run' if m['dry_run'] else ''}). Detector: random weights, speed only.", "",
             "| stage | measure | speed | peak GPU memory (allocated / reserved) | steps |", "|---|---|---|---|---|"]
    for name, st in data["stages"].items():
        if st.get("status") in ("error", "skipped", "pending"):
            lines.append(f"| {name} | {st['status']}: {st.get('error', '')[:160]} | | | |")
        for r in st["rows"]:
            lines.append(_md_row(name, r))
    return "\n".join(lines) + "\n"


def _md_row(name: str, r: dict[str, Any]) -> str:
    mem = (f"{r['max_allocated_mib']:.0f} / {r['max_reserved_mib']:.0f} MiB" if "max_allocated_mib" in r
           else f"RSS peak {r['process_peak_rss_mib']:.0f} MiB (CPU)" if "process_peak_rss_mib" in r else "")
    if "skipped" in r:
        return f"| {name} | {r} | skipped ({r['skipped']}) | | |"
    if name == "detector":
        what = f"bua-r101 {r['precision']} batch {r['batch']} {r['layout']}, {r['proposals']} proposals"
        return f"| {name} | {what} | {r['images_per_s']:.2f} images/s | {mem} | {r['steps']} |"
    if name == "caption":
        return (f"| {name} | {r['measure']}, {r['images']} images x {r['captions'] // max(r['images'], 1)} | "
                f"{r['steps_per_s']:.2f} steps/s | {mem} | {r['steps']} |")
    if name == "vqa":
        return (f"| {name} | {r['measure']}, batch {r['batch']} | {r['questions_per_s']:.0f} questions/s | {mem} | "
                f"{r['steps']} |")
    if name != "pipeline":
        return f"| {name} | " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()) + " | | | |"
    cuda = ", ".join(f"{v:.0f}" for v in r["worker_cuda_max_allocated_mib"]) or "-"
    rss = ", ".join(f"{v:.0f}" for v in r["worker_peak_rss_mib"])
    return (f"| {name} | {r['extractor']} run_extraction, {r['images']} images, {r['workers']} worker(s) | "
            f"{r['images_per_s']:.2f} images/s | worker CUDA max allocated {cuda} MiB; worker RSS {rss} MiB | "
            f"{r['written']} written |")


def machine(device: torch.device, budget: float, dry: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": dry, "budget_s": budget,
            "gpu": props.name if props else "no GPU (CPU)", "gpu_memory_gib": round(props.total_memory / 2**30, 1)
            if props else 0, "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "python": platform.python_version(),
            "host": platform.node(), "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu.json"), help="JSON results (+ the .md beside it)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="total time for all stages")
    ap.add_argument("--device", default="cuda", help="a CUDA device (cuda, cuda:1)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--dry-run", action="store_true", help="one step of each stage on CPU, tiny sizes (CI)")
    args = ap.parse_args(argv)
    wanted = [s for s in args.stages.split(",") if s]
    if unknown := [s for s in wanted if s not in STAGES]:
        print(f"Error: unknown stage {unknown[0]!r} (--stages): choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"Error: no CUDA GPU is visible (--device {args.device}): run on a GPU machine, or --dry-run",
              file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.out, machine(device, args.budget_s, args.dry_run))

    def alarm(signum, frame):  # noqa: ARG001
        raise HardLimit(f"hard time limit ({args.budget_s:.0f} s + 60 s) reached")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(args.budget_s) + 60)
    try:
        with tempfile.TemporaryDirectory(prefix="butd-gpu-bench-") as tmp:
            failed = run_stages(Ctx(device, args.dry_run, args.budget_s, tmp=Path(tmp)), rec,
                                {name: STAGES[name] for name in wanted})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    print(f"\nwrote {args.out} and {rec.md}\n\n" + markdown(rec.data), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
