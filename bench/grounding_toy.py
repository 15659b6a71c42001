"""Benchmark: does a trained Up-Down look at the object it names? Grounding on the toy world, against
uniform and shuffled attention over the same captions, in the same run.

Trains one small Up-Down captioner (cross-entropy) on the toy world's oracle region store (one region per
drawn object at its ground-truth box, plus 1-2 background regions), captions the test split greedily, and
grounds every shape word (the toy world's CHAIR word list) against the toy world's instance boxes:

* ``trained``: the model's attention at the step that generated the word;
* ``uniform``: 1/K on every region (what a model that does not attend would give);
* ``shuffled``: the model's weights for that step permuted over the regions (as peaked, placed at random;
  mean of 5 draws).

Prints grounding accuracy (top-attended box IoU >= 0.5 with a box of the named shape) and attention
correctness (attention mass inside those boxes, Liu et al. 2017) of each, and the margins of ``trained``.
Run: ``python bench/grounding_toy.py [--images 300] [--epochs 12]`` (about 3-4 minutes on 1 core).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from butd.datasets.captions import CaptionDataset, collate_captions, load_karpathy, split_images
from butd.datasets.toy import ToyConfig, make_toy_world
from butd.datasets.toy_features import write_oracle_store
from butd.evaluate.caption_checks import grounding_report, hallucination_inputs
from butd.evaluate.grounding import baseline_attention
from butd.models.decoding import greedy_decode
from butd.shards import FeatureStore
from butd.tasks.caption import load_run
from butd.train.caption import CaptionPaths, load_caption_config, train_caption

SMALL = {"embed_dim": 64, "hidden_dim": 128, "att_dim": 32, "dropout": 0.1}
SHUFFLES = 5


def _captions_and_attention(model, dataset, vocab, max_len):
    """Greedy captions (image id -> words) and the attention of each word [T, K] over the valid regions."""
    batch = collate_captions([dataset[i] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        out = greedy_decode(model, batch["features"], batch["mask"], max_len)
    words, attention = {}, {}
    for b, im in enumerate(dataset.images):
        ws = vocab.decode(out["tokens"][b].tolist()).split()
        k = int(batch["mask"][b].sum())
        words[im.image_id] = ws
        attention[im.image_id] = out["attn"][b, : len(ws), :k].numpy()
    return words, attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_toy_world(root / "toy", ToyConfig(n_images=args.images, seed=0))
        store_path = write_oracle_store(root / "toy", root / "store", dim=32)
        captions = root / "toy" / "dataset_coco.json"
        cfg = load_caption_config(None, {
            "model_name": "updown", "model": SMALL, "data": {"min_count": 2}, "device": "cpu",
            "xe": {"epochs": args.epochs, "batch_size": 32, "lr": 5e-3, "grad_clip": 0.1, "log_every": 0},
            "scheduled_sampling": {"start": 0, "increase_every": 3}})
        t0 = time.perf_counter()
        train_caption(cfg, CaptionPaths(str(store_path), str(captions)), root / "run", echo=None)
        train_s = time.perf_counter() - t0
        run = load_run(root / "run")
        cfg, model, vocab = run.config, run.model, run.vocab
        store = FeatureStore(store_path)
        test = CaptionDataset(split_images(load_karpathy(captions), "test"), store, vocab, cfg.data, per_caption=False)
        words, attention = _captions_and_attention(model, test, vocab, cfg.decode.max_len)
        inputs = hallucination_inputs(captions)
        records = {k: store[k] for k in words}
        rng = np.random.default_rng(0)
        results = {"trained": grounding_report(words, attention, records, inputs)[0],
                   "uniform": grounding_report(words, {k: baseline_attention(a, "uniform", rng)
                                                       for k, a in attention.items()}, records, inputs)[0]}
        draws = [grounding_report(words, {k: baseline_attention(a, "shuffled", rng) for k, a in attention.items()},
                                  records, inputs)[0] for _ in range(SHUFFLES)]
        results["shuffled"] = {m: float(np.mean([d[m] for d in draws]))
                               for m in ("grounding_accuracy", "attention_correctness")}
        results["shuffled"]["grounded_mentions"] = draws[0]["grounded_mentions"]
    n = results["trained"]["grounded_mentions"]
    print(f"toy world: {args.images} images, {args.epochs} XE epochs ({train_s:.0f}s), {len(words)} test captions, "
          f"{n} shape words with ground-truth boxes")
    for name, r in results.items():
        print(f"{name:9s} grounding accuracy {100 * r['grounding_accuracy']:5.1f}  "
              f"attention correctness {100 * r['attention_correctness']:5.1f}")
    t = results["trained"]
    for base in ("uniform", "shuffled"):
        b = results[base]
        acc = 100 * (t["grounding_accuracy"] - b["grounding_accuracy"])
        mass = 100 * (t["attention_correctness"] - b["attention_correctness"])
        print(f"trained - {base:8s}: grounding accuracy {acc:+5.1f} points, attention correctness {mass:+5.1f} points")


if __name__ == "__main__":
    main()
