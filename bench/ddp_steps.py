"""DDP training speed: Up-Down XE steps/s through the real ``fit`` loop on 1 process vs N processes.

The global batch is the same in every run (each of N processes takes batch/N), so steps/s are directly
comparable and the ratio is the speed-up of the same recipe. Synthetic in-memory data (no I/O), a timing
callback on every step, the first steps dropped as warm-up. On CPU each process gets one torch thread;
the 1-process baseline is also measured with N threads (the whole machine for one process).
Usage: python bench/ddp_steps.py [--nproc 2] [--steps 12] [--batch 32] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from butd.models.registry import build_caption_model
from butd.train import distributed as ddp
from butd.train.launch import launch_local
from butd.train.loop import Callback, LoopConfig, fit

K, D, V, L, WARMUP = 36, 512, 2000, 16, 2
MODEL = {"embed_dim": 256, "hidden_dim": 256, "att_dim": 128, "dropout": 0.0}


class _Clock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step(self, state, logs) -> None:
        self.times.append(time.perf_counter())


class _Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.feats = torch.randn(n, K, D, generator=gen)
        self.caps = torch.randint(4, V, (n, L + 2), generator=gen)
        self.caps[:, 0], self.caps[:, -1] = 1, 2  # BOS, EOS

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.feats[i], "mask": torch.ones(K, dtype=torch.bool), "captions": self.caps[i]}


def steps_per_second(steps: int, batch: int, device: str, out_dir: str) -> float:
    """Run ``steps`` XE steps of ``fit`` here (one rank of whatever group this process is in)."""
    _, dev = ddp.setup(torch.device(device))
    torch.manual_seed(0)
    model = build_caption_model("updown", V, D, MODEL)
    clock = _Clock()
    cfg = LoopConfig(epochs=1, batch_size=batch, lr=1e-4, log_every=0, max_steps=steps, monitor="none")
    fit(model, torch.optim.Adam(model.parameters(), lr=1e-4), _Synthetic(batch * steps), model.loss, cfg,
        out_dir, callbacks=[clock], device=dev, echo=None)
    t = clock.times[WARMUP - 1 :]
    return (len(t) - 1) / (t[-1] - t[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32, help="global batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_out:  # one rank of the N-process run
        torch.set_num_threads(1)
        rate = steps_per_second(args.steps, args.batch, args.device, str(Path(args.worker_out).parent / "run"))
        if ddp.current().is_main:
            Path(args.worker_out).write_text(json.dumps({"steps_per_s": rate}), encoding="utf-8")
        return
    ddp.per_rank_batch(args.batch, args.nproc)
    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        threads = [1, args.nproc] if args.device == "cpu" else [torch.get_num_threads()]
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            rates[f"1 process, {n_threads} thread(s)"] = steps_per_second(args.steps, args.batch, args.device,
                                                                         f"{tmp}/one{n_threads}")
        out = Path(tmp) / "multi.json"
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        # the workers get no --nproc: torchrun's parser would take it for an abbreviation of its own option
        worker = [__file__, "--steps", str(args.steps), "--batch", str(args.batch), "--device", args.device]
        code = launch_local(args.nproc, [*worker, "--worker-out", str(out)], module=None)
        if code:
            raise SystemExit(code)
        multi = json.loads(out.read_text())["steps_per_s"]
    print(f"Up-Down XE, global batch {args.batch}, {K}x{D} regions, vocabulary {V}, length {L}, "
          f"{args.steps} steps ({WARMUP} warm-up), device {args.device}")
    base = rates[f"1 process, {threads[0]} thread(s)"]
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:7.2f} steps/s")
    print(f"  {args.nproc} processes x batch {args.batch // args.nproc:<10d} {multi:7.2f} steps/s")
    print(f"ratio {args.nproc} processes / 1 process ({threads[0]} thread): {multi / base:.2f}x")
    if len(threads) > 1:
        print(f"ratio {args.nproc} processes / 1 process ({threads[1]} threads): "
              f"{multi / rates[f'1 process, {threads[1]} thread(s)']:.2f}x")


if __name__ == "__main__":
    main()
