"""Karpathy loading, vocabulary, the store-joined caption dataset and its collate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from butd.datasets.captions import (
    CaptionDataError,
    CaptionDataset,
    DataConfig,
    collate_captions,
    load_karpathy,
    split_images,
)
from butd.datasets.vocab import BOS, EOS, PAD, UNK, Vocab
from butd.shards import FeatureStore


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, FeatureStore]:
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    root = tmp_path_factory.mktemp("toycap")
    make_toy_world(root, ToyConfig(n_images=30, seed=1))
    store = FeatureStore(write_oracle_store(root, root / "store", dim=32))
    return root, store


def test_vocab_roundtrip(tmp_path) -> None:
    vocab = Vocab.build([["a", "red", "circle"]] * 5 + [["a", "rare"]], min_count=5)
    assert vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and vocab.words[4] == "a"
    assert "rare" not in vocab
    ids = vocab.encode(["a", "rare", "circle", "x", "y"], max_len=3)
    assert ids == [BOS, vocab.index["a"], UNK, vocab.index["circle"], EOS]
    assert vocab.decode(ids + [PAD, 7]) == "a <unk> circle"
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a butd vocabulary"):
        Vocab.load(tmp_path / "bad.json")


def test_karpathy_splits(toy) -> None:
    root, _ = toy
    images = load_karpathy(root / "dataset_coco.json")
    assert len(images) == 30 and all(len(im.tokens) == 5 for im in images)
    train = split_images(images, "train")
    raw = json.loads((root / "dataset_coco.json").read_text())["images"]
    assert len(train) == sum(im["split"] in ("train", "restval") for im in raw)
    assert any(im.split == "restval" for im in train)
    assert {im.split for im in split_images(images, "val")} == {"val"}
    with pytest.raises(CaptionDataError, match="no images") as info:
        split_images(images, "nosuchsplit")
    assert info.value.usage and "--split nosuchsplit" in info.value.line()


def test_flickr_ids_and_raw_only(tmp_path) -> None:
    data = {"dataset": "flickr8k", "images": [
        {"filename": "123_abc.jpg", "split": "train", "sentences": [{"raw": "A dog, running."}]}]}
    (tmp_path / "f.json").write_text(json.dumps(data))
    (im,) = load_karpathy(tmp_path / "f.json")
    assert im.image_id == "123_abc" and im.tokens == (("a", "dog", "running"),)


@pytest.mark.parametrize("text,match", [("{not json", "malformed JSON"), ('{"x": 1}', "not a Karpathy"),
                                        ('{"images": [{"split": "train"}]}', "image #0 is malformed")])
def test_malformed_json_one_line(tmp_path, text: str, match: str) -> None:
    (tmp_path / "k.json").write_text(text)
    with pytest.raises(CaptionDataError, match=match) as info:
        load_karpathy(tmp_path / "k.json")
    assert "\n" not in str(info.value)


def test_dataset_and_collate(toy) -> None:
    root, store = toy
    images = split_images(load_karpathy(root / "dataset_coco.json"), "train")
    cfg = DataConfig(min_count=2, max_len=6, max_boxes=3)
    vocab = Vocab.build((t for im in images for t in im.tokens), cfg.min_count)
    ds = CaptionDataset(images, store, vocab, cfg)
    assert len(ds) == 5 * len(images)
    batch = collate_captions([ds[i] for i in range(7)])
    b, k, d = batch["features"].shape
    assert (b, d) == (7, 32) and k <= 3 and batch["mask"].shape == (7, k)
    assert batch["mask"].dtype == torch.bool
    assert batch["captions"].shape[0] == 7 and batch["captions"].shape[1] <= 6 + 2
    assert (batch["captions"][:, 0] == BOS).all()
    assert all(len(r) == 5 for r in batch["refs"]) and len(batch["image_ids"]) == 7
    # padding rows are zero and masked
    assert torch.all(batch["features"][~batch["mask"]] == 0)
    per_image = CaptionDataset(images, store, vocab, cfg, per_caption=False)
    assert len(per_image) == len(images)


def test_missing_images(toy, tmp_path) -> None:
    root, store = toy
    images = split_images(load_karpathy(root / "dataset_coco.json"), "train")
    from butd.datasets.captions import CaptionImage

    ghosts = [CaptionImage(f"ghost{i}", "train", (("a", "b"),), ("a b",)) for i in range(3)]
    vocab = Vocab.build([["a"]], 1)
    with pytest.raises(CaptionDataError, match=r"3 of \d+ images are missing") as info:
        CaptionDataset(images + ghosts, store, vocab, DataConfig())
    assert "\n" not in str(info.value)
    ds = CaptionDataset(images + ghosts, store, vocab, DataConfig(), per_caption=False, skip_missing=True)
    assert len(ds) == len(images)
    with pytest.raises(CaptionDataError):
        CaptionDataset(ghosts, store, vocab, DataConfig(), skip_missing=True)


def test_grid_store(tmp_path) -> None:
    import numpy as np

    from butd.datasets.captions import CaptionImage
    from butd.shards import ShardWriter, scalar

    with ShardWriter(tmp_path / "grid", "grid") as w:
        for i in range(3):
            w.add(str(i), {"features": np.full((6, 4), i, dtype=np.float16), "grid_h": scalar(2),
                           "grid_w": scalar(3), "image_w": scalar(30), "image_h": scalar(20)})
    images = [CaptionImage(str(i), "train", (("a", "b"),), ("a b",)) for i in range(3)]
    vocab = Vocab.build([["a", "b"]], 1)
    ds = CaptionDataset(images, FeatureStore(tmp_path / "grid"), vocab, DataConfig(max_boxes=2))
    batch = collate_captions([ds[i] for i in range(3)])
    # max_boxes only truncates region stores
    assert batch["features"].shape == (3, 6, 4) and batch["features"].dtype == torch.float32
    assert batch["mask"].all() and float(batch["features"][2, 5, 0]) == 2.0


def test_image_major_items(toy) -> None:
    """captions_per_image = n: one item per image with n captions (self-critical get_captions), drawn per epoch
    as a pure function of (seed, epoch, image); collate gives one feature row per image and image_index."""
    from butd.datasets.captions import CaptionImage

    root, store = toy
    images = split_images(load_karpathy(root / "dataset_coco.json"), "train")
    cfg = DataConfig(min_count=1, max_len=8, captions_per_image=3)
    vocab = Vocab.build((t for im in images for t in im.tokens), cfg.min_count)
    ds = CaptionDataset(images, store, vocab, cfg, seed=4)
    assert len(ds) == len(images) and ds.rows_per_epoch == 3 * len(images)
    for i, im in enumerate(images):  # 5 references: a run of 3 consecutive ones
        start = ds.caption_choice(i)[0]
        assert ds.caption_choice(i) == [start, start + 1, start + 2] and 0 <= start <= len(im.tokens) - 3
        assert [c.tolist() for c in ds[i]["captions"]] == [vocab.encode(im.tokens[j], 8) for j in ds.caption_choice(i)]
    draws = [[tuple(ds.caption_choice(i)) for i in range(len(ds))] for _ in range(2)]
    assert draws[0] == draws[1]  # deterministic
    ds.set_epoch(1)
    assert [tuple(ds.caption_choice(i)) for i in range(len(ds))] != draws[0]  # a new draw each epoch
    ds.set_epoch(0)
    assert [tuple(ds.caption_choice(i)) for i in range(len(ds))] == draws[0]  # a resumed epoch: the same
    batch = collate_captions([ds[i] for i in range(4)])
    assert batch["features"].shape[0] == 4 and batch["mask"].shape[0] == 4 and len(batch["refs"]) == 4
    assert batch["captions"].shape[0] == 12 and batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert (batch["captions"][:, 0] == BOS).all()
    # fewer references than n: drawn with replacement
    few = CaptionDataset([CaptionImage(images[0].image_id, "train", (("a",), ("b",)), ("a", "b"))], store, vocab,
                         DataConfig(captions_per_image=5))
    picked = few.caption_choice(0)
    assert len(picked) == 5 and set(picked) <= {0, 1} and few[0]["captions"][0].shape == (3,)
    with pytest.raises(CaptionDataError, match="captions_per_image") as info:
        CaptionDataset(images, store, vocab, DataConfig(captions_per_image=-1))
    assert "\n" not in str(info.value)
