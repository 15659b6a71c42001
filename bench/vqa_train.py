"""Benchmark: Up-Down VQA training steps/s on CPU at paper scale, and whether data loading keeps up.

Model: batch 512, 36 regions x 2048-d, 3129 answers, 14-word questions (synthetic tensors).
Data: a synthetic region store (36 x 2048 float16 per image) read through VQADataset + DataLoader with
0 and 2 workers; the ratio model-step-time / loading-time-per-batch must stay > 1 (loading not the
bottleneck). Run: ``python bench/vqa_train.py`` (about 1-2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from butd.datasets.vqa import Vocab, VQADataConfig, VQADataset, VQAExample, synthetic_record
from butd.models.updown_vqa import UpDownVQA, UpDownVQAConfig, vqa_loss
from butd.shards import FeatureStore, ShardWriter

BATCH, BOXES, DIM, ANSWERS, QLEN, VOCAB = 512, 36, 2048, 3129, 14, 20000


def model_step_time(steps: int) -> float:
    """Seconds per optimiser step (forward + BCE + backward + Adamax), after one warm-up step."""
    torch.manual_seed(0)
    model = UpDownVQA(VOCAB, ANSWERS, DIM, UpDownVQAConfig())
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batch = {
        "tokens": torch.randint(1, VOCAB, (BATCH, QLEN)),
        "features": torch.randn(BATCH, BOXES, DIM).relu(),
        "mask": torch.ones(BATCH, BOXES, dtype=torch.bool),
        "target": (torch.rand(BATCH, ANSWERS) > 0.999).float(),
    }
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = vqa_loss(model(batch)["logits"], batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_store(path: Path, records: int) -> FeatureStore:
    rng = np.random.default_rng(0)
    with ShardWriter(path, "region", max_records=records // 2 + 1) as w:
        for i in range(records):
            rec = synthetic_record(BOXES, DIM, rng)
            rec["features"] = rec["features"].astype(np.float16)
            w.add(str(i), rec)
    return FeatureStore(path)


def loading_time(store: FeatureStore, records: int, workers: int, batches: int) -> float:
    """Seconds per batch of 512 items (features padded + mask + tokens + dense 3129-way target), counted
    from iterator creation so worker start-up and prefetching are included, not hidden."""
    answers = [f"a{i}" for i in range(ANSWERS)]
    rng = np.random.default_rng(1)
    examples = [
        VQAExample(
            q,
            int(rng.integers(records)),
            "what is on the table today",
            answer_type="other",
            answers=tuple(answers[int(j)] for j in rng.integers(0, ANSWERS, 10)),
        )
        for q in range(BATCH * batches)
    ]
    ds = VQADataset(examples, store, Vocab.build(examples), answers, VQADataConfig())
    loader = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    for i in range(min(records, 64)):  # warm the page cache so both settings read from memory
        store[str(i)]
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    step = model_step_time(args.steps)
    print(
        f"model step  batch {BATCH}, {BOXES}x{DIM} regions, {ANSWERS} answers: {step:.2f} s/step "
        f"= {1 / step:.3f} steps/s = {BATCH / step:.0f} questions/s"
    )
    tmp = Path(tempfile.mkdtemp(prefix="butd-bench-"))
    try:
        t0 = time.perf_counter()
        store = make_store(tmp / "store", args.records)
        print(f"store       {args.records} records (float16) written in {time.perf_counter() - t0:.1f} s")
        for workers in (0, 2):
            load = loading_time(store, args.records, workers, args.batches)
            verdict = "ok" if load < step else "LOADING IS THE BOTTLENECK"
            print(
                f"loading     {workers} workers: {load:.2f} s/batch = {BATCH / load:.0f} questions/s; "
                f"step/load ratio {step / load:.1f}x ({verdict})"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
