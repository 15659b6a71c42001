"""Captioning training speed on CPU: XE steps/s for updown and sat-soft, and one SCST step split into
sampling / greedy baseline / reward / backward. Batch 50, 36x2048 regions, vocabulary 10k, length 16
(the issue's setting), synthetic tensors. The baseline each ratio is measured against is the XE step of
the same model in the same run.
Usage: python bench/caption_train.py [--steps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from butd.datasets.vocab import Vocab
from butd.evaluate.cider import CiderD
from butd.models.registry import build_caption_model
from butd.train.scst import ScstConfig, ScstObjective

B, K, D, V, L = 50, 36, 2048, 10_000, 16


def _batch(rng: np.random.Generator) -> dict:
    caps = torch.from_numpy(rng.integers(4, V, (B, L + 2))).long()
    caps[:, 0] = 1  # BOS
    caps[:, -1] = 2  # EOS
    return {"features": torch.randn(B, K, D), "mask": torch.ones(B, K, dtype=torch.bool), "captions": caps}


def _time(fn, steps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(V - 4)]
    vocab = Vocab.build([words] * 5, min_count=1)
    batch = _batch(rng)
    print(f"batch {B}, {K}x{D} regions, vocabulary {len(vocab)}, length {L}, torch threads {torch.get_num_threads()}")
    xe_times = {}
    for name in ("updown", "sat-soft"):
        model = build_caption_model(name, len(vocab), D, {})
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            opt.zero_grad()
            loss = model.loss(model(batch), batch)
            loss = loss["loss"] if isinstance(loss, dict) else loss
            loss.backward()
            opt.step()

        xe_times[name] = _time(step, args.steps)
        print(f"{name:9s} XE   {1 / xe_times[name]:6.2f} steps/s  ({xe_times[name]:.2f} s/step)")

    model = build_caption_model("updown", len(vocab), D, {})
    refs = [[" ".join(rng.choice(words, 10)) for _ in range(5)] for _ in range(B)]
    scorer = CiderD(refs)
    obj = ScstObjective(model, scorer, vocab, ScstConfig(baseline="greedy", samples=5))
    sbatch = {**batch, "refs": refs}
    from butd.models.decoding import greedy_decode, sample_decode

    t = {}
    t0 = time.perf_counter()
    out = sample_decode(model, batch["features"], batch["mask"], L, n=5, with_grad=True)
    t["sampling (5 per image, with grad)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        model.eval()
        greedy_decode(model, batch["features"], batch["mask"], L)
        model.train()
    t["greedy baseline decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards = obj.rewards(out["tokens"], refs)
    t["CIDEr-D reward (250 captions)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss = -(rewards.reshape(-1, 1) * out["logprobs"]).mean()
    loss.backward()
    t["backward"] = time.perf_counter() - t0
    total = sum(t.values())
    print(f"updown    SCST step {total:.2f} s  ({total / xe_times['updown']:.2f}x an XE step):")
    for k, v in t.items():
        print(f"    {k:36s} {v:6.2f} s  {100 * v / total:5.1f}%")
    obj(sbatch)["loss"].backward()  # the real objective runs end to end too


if __name__ == "__main__":
    main()
