"""SCST rewards of one global batch, run on every rank of a (possibly 1-process) group; rank 0 writes JSON.

Each rank samples and scores only its own images (its share of the global batch from the training
sampler), with the CIDEr-D document frequencies computed once on rank 0 and shared. Sampling uses one
generator per image seeded by the image's dataset index, so that a 1-process run draws the same captions
and the rewards can be compared exactly. Usage: python ddp_scst_worker.py STORE KARPATHY_JSON OUT_JSON
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from butd.datasets.captions import CaptionDataset, DataConfig, collate_captions, load_karpathy, split_images
from butd.datasets.vocab import Vocab, tokens_to_text
from butd.evaluate.cider import CiderD
from butd.models.decoding import greedy_decode, sample_decode
from butd.models.registry import build_caption_model
from butd.shards import FeatureStore
from butd.train import distributed as ddp
from butd.train.scst import ScstConfig, ScstObjective

GLOBAL_BATCH = 8


def main(store_dir: str, captions: str, out: str) -> None:
    info, device = ddp.setup(torch.device("cpu"))
    store = FeatureStore(store_dir)
    images = split_images(load_karpathy(captions), "train")
    vocab = Vocab.build((t for im in images for t in im.tokens), 2)
    data = CaptionDataset(images, store, vocab, DataConfig(), per_caption=False)
    arrays = ddp.share_array_state(lambda: CiderD([im.refs for im in data.images]).to_arrays())
    digest = hashlib.sha256(b"".join(a.tobytes() for _, a in sorted(arrays.items()))).hexdigest()
    torch.manual_seed(0)
    model = build_caption_model("updown", len(vocab), store.feature_dim,
                                {"embed_dim": 32, "hidden_dim": 48, "att_dim": 16, "dropout": 0.0}).eval()
    objective = ScstObjective(model, CiderD.from_arrays(arrays), vocab, ScstConfig(samples=5))
    sampler = ddp.ShardedEpochSampler(len(data), seed=3, rank=info.rank, world_size=info.world_size)
    mine = list(sampler)[: ddp.per_rank_batch(GLOBAL_BATCH, info.world_size)]
    rows = []
    with torch.no_grad():
        for idx in mine:
            batch = collate_captions([data[idx]])
            gen = torch.Generator().manual_seed(1000 + idx)
            tokens = sample_decode(model, batch["features"], batch["mask"], 16, n=5, generator=gen)["tokens"]
            greedy = greedy_decode(model, batch["features"], batch["mask"], 16)["tokens"]
            _, base = objective.scorer.score_lists(tokens_to_text(greedy, vocab), batch["refs"])
            rewards = objective.rewards(tokens, batch["refs"])[0].tolist()
            rows.append({"index": idx, "rank": info.rank, "rewards": rewards, "greedy_reward": float(base[0])})
    gathered = ddp.gather_json({"rows": rows, "df_sha256": digest})
    if info.is_main:
        Path(out).write_text(json.dumps({"world_size": info.world_size, "ranks": gathered}), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:4])
