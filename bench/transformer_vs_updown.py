"""Benchmark: the Transformer captioner against Up-Down on the same toy-world store, in the same run.

Makes the toy world and its effnetlite0 ``--mode boxes`` store as ``make toy-data`` does (or reuses ``--toy DIR``
that holds them), then trains with the small CPU configs ``src/butd/demo_configs/{updown,transformer}.yaml``:

* Up-Down: cross-entropy only;
* Transformer: cross-entropy, then SCST (its config's baseline: the mean reward of the other samples).

Prints test-split CIDEr-D (x100, document frequencies from the test references, each run's ``decode:``
settings) of Up-Down after XE, of the Transformer after XE (its XE phase's best checkpoint) and after SCST,
with the ratios Transformer XE / Up-Down XE (goal >= 0.9) and Transformer SCST / XE (goal > 1), per seed and as
medians. Run: ``python bench/transformer_vs_updown.py [--toy data/toy] [--seeds 0 1]`` (minutes per seed on CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from butd.datasets.captions import CaptionDataset, load_karpathy, split_images
from butd.datasets.vocab import Vocab
from butd.evaluate.cider import CiderD
from butd.models.registry import build_caption_model
from butd.shards import FeatureStore
from butd.train.caption import CaptionPaths, generate_captions, load_caption_config, train_caption
from butd.train.checkpoint import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "butd" / "demo_configs"


def _toy(root: Path, images: int) -> tuple[Path, Path]:
    """(captions json, boxes store) of a toy world under root, made with the CLI when missing."""
    butd = [sys.executable, "-m", "butd"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if not (root / "dataset_coco.json").is_file():
        subprocess.run([*butd, "toy", "make", str(root), "--images", str(images)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    store = root / "features" / "boxes"
    if not (store / "manifest.json").is_file():
        subprocess.run([*butd, "extract", "--dataset", "toy", "--root", str(root), "--extractor", "effnetlite0",
                        "--mode", "boxes", "--out", str(store), "--workers", "2"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return root / "dataset_coco.json", store


def _test_cider(run: Path, captions: Path, store: Path, weights: Path | None = None) -> float:
    """Test CIDEr-D x100 of a run's model (its final weights, or the checkpoint ``weights``)."""
    cfg, vocab = load_caption_config(run / "config.yaml"), Vocab.load(run / "vocab.json")
    ckpt = load_checkpoint(weights if weights is not None else run / "checkpoints" / "best.pt")
    model = build_caption_model(cfg.model_name, len(vocab), int(ckpt.meta["feature_dim"]), cfg.model)
    model.load_state_dict(ckpt.model)
    model.eval()
    test = CaptionDataset(split_images(load_karpathy(captions), "test"), FeatureStore(store), vocab, cfg.data,
                          per_caption=False)
    refs = {im.image_id: im.refs for im in test.images}
    preds = generate_captions(model, test, vocab, cfg.decode)
    return 100 * CiderD(list(refs.values())).score(preds, refs)[0]


def _train(model: str, captions: Path, store: Path, out: Path, seed: int, scst: bool) -> float:
    overrides = {"xe": {"seed": seed}, "scst": {"seed": seed}, **({} if scst else {"scst": {"epochs": 0}})}
    cfg = load_caption_config(CONFIGS / f"{model}.yaml", overrides)
    t0 = time.perf_counter()
    train_caption(cfg, CaptionPaths(str(store), str(captions)), out, echo=None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", type=Path, default=None, help="a toy world dir (made here when missing)")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-transformer-"))
    try:
        captions, store = _toy(args.toy or tmp / "toy", args.images)
        rows = []
        for seed in args.seeds:
            up, tr = tmp / f"updown-{seed}", tmp / f"transformer-{seed}"
            up_s = _train("updown", captions, store, up, seed, scst=False)
            tr_s = _train("transformer", captions, store, tr, seed, scst=True)
            row = {"seed": seed, "updown": _test_cider(up, captions, store),
                   "xe": _test_cider(tr, captions, store, tr / "xe" / "checkpoints" / "best.pt"),
                   "scst": _test_cider(tr, captions, store), "updown_s": up_s, "transformer_s": tr_s}
            rows.append(row)
            print(f"seed {seed}: Up-Down XE {row['updown']:.1f} ({up_s:.0f} s) | Transformer XE {row['xe']:.1f}, "
                  f"after SCST {row['scst']:.1f} ({tr_s:.0f} s, XE + SCST) | XE ratio {row['xe'] / row['updown']:.3f}"
                  f", SCST / XE {row['scst'] / row['xe']:.3f}", flush=True)
        med = {k: statistics.median(r[k] for r in rows) for k in ("updown", "xe", "scst")}
        n_test = len(split_images(load_karpathy(captions), "test"))
        print(f"\ntoy world: {args.images} images ({n_test} test), effnetlite0 boxes store, seeds {args.seeds}, "
              f"torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}")
        print("| model | test CIDEr-D (x100, median) | ratio | goal |\n|---|---|---|---|")
        print(f"| Up-Down, XE | {med['updown']:.1f} | 1 | |")
        print(f"| Transformer, XE | {med['xe']:.1f} | {med['xe'] / med['updown']:.3f} x Up-Down | >= 0.9 |")
        print(f"| Transformer, XE + SCST | {med['scst']:.1f} | {med['scst'] / med['xe']:.3f} x its XE | > 1 |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
