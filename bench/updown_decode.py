"""Benchmark: Up-Down decoding recipes on the toy world, CIDEr-D of beam 5 + Caffe's repeat block vs beam 3.

Trains one small Up-Down captioner (cross-entropy, the default recipe: step decay, scheduled sampling,
elementwise clipping) on the toy world with the oracle region store, then captions the test split with

* ``beam3``: beam 3, no repeat block, max 16 tokens (butd's old decoding default);
* ``beam5+block``: beam 5, Caffe's repeat block with its allowed list, max 20 tokens (configs/updown-paper.yaml);
* ``beam5``: beam 5 alone, to separate the two effects.

Prints CIDEr-D (document frequencies from the test references, x100) of each and the ratios to ``beam3``,
plus how many test captions repeat a word outside the allowed list. Run:
``python bench/updown_decode.py [--images 300] [--epochs 12]`` (about 3-4 minutes on 1 core).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from butd.datasets.captions import CaptionDataset, load_karpathy, split_images
from butd.datasets.toy import ToyConfig, make_toy_world
from butd.datasets.toy_features import write_oracle_store
from butd.evaluate.cider import CiderD
from butd.models.decoding import CAFFE_ALLOWED_REPEATS, DecodeConfig
from butd.shards import FeatureStore
from butd.tasks.caption import load_run
from butd.train.caption import CaptionPaths, generate_captions, load_caption_config, train_caption

SMALL = {"embed_dim": 64, "hidden_dim": 128, "att_dim": 32, "dropout": 0.1}
DECODES = {
    "beam3": DecodeConfig(method="beam", beam=3, max_len=16),
    "beam5+block": DecodeConfig(method="beam", beam=5, max_len=20, block_repeats=True),
    "beam5": DecodeConfig(method="beam", beam=5, max_len=20),
}


def _repeats(caption: str) -> bool:
    words = [w for w in caption.split() if w not in CAFFE_ALLOWED_REPEATS]
    return len(words) != len(set(words))


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
        loaded = load_run(root / "run")
        cfg, model, vocab = loaded.config, loaded.model, loaded.vocab
        test = CaptionDataset(split_images(load_karpathy(captions), "test"), FeatureStore(store_path), vocab,
                              cfg.data, per_caption=False)
        refs = {im.image_id: im.refs for im in test.images}
        scorer = CiderD(list(refs.values()))
        scores, repeats = {}, {}
        for name, dcfg in DECODES.items():
            preds = generate_captions(model, test, vocab, dcfg)
            scores[name] = 100 * scorer.score(preds, refs)[0]
            repeats[name] = sum(_repeats(c) for c in preds.values())
    print(f"toy world: {args.images} images, {args.epochs} XE epochs ({train_s:.0f}s), {len(refs)} test images")
    for name in DECODES:
        print(f"{name:12s} CIDEr-D {scores[name]:7.2f}  ratio to beam3 {scores[name] / scores['beam3']:.3f}  "
              f"captions repeating a word: {repeats[name]}")


if __name__ == "__main__":
    main()
