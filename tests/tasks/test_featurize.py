"""One featurize per task, shared by its Dataset and by `butd caption` / `butd answer` on new images."""

import numpy as np
import torch

from butd.datasets.captions import CaptionDataset, CaptionImage, DataConfig
from butd.datasets.vocab import Vocab
from butd.shards import ShardWriter, scalar
from butd.tasks import caption, vqa


def _grid_record(side: int, dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"features": rng.standard_normal((side * side, dim)).astype(np.float32),
            "grid_h": scalar(side), "grid_w": scalar(side), "image_w": scalar(224), "image_h": scalar(224)}


def _region_record(k: int, dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    boxes = np.sort(rng.uniform(0, 100, (k, 4)).astype(np.float32), axis=1)
    return {"boxes": boxes, "features": rng.standard_normal((k, dim)).astype(np.float32),
            "num_boxes": scalar(k), "image_w": scalar(100), "image_h": scalar(100)}


def test_caption_new_images_see_every_grid_cell(tmp_path):
    """The bug: `butd caption` cut a 14x14 grid to max_boxes=100 cells; the Dataset kept all 196."""
    rec = _grid_record(14, 8)
    with ShardWriter(tmp_path / "grid", "grid") as w:
        w.add("1", rec)
    from butd.shards import FeatureStore

    store = FeatureStore(tmp_path / "grid")
    cfg = DataConfig(max_boxes=100)
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a"])
    ds = CaptionDataset([CaptionImage("1", "test", (("a",),), ("a",))], store, vocab, cfg, per_caption=False)
    x = caption.featurize(rec, store.kind, cfg)
    assert x["features"].shape == (1, 196, 8) and bool(x["mask"].all())
    assert torch.equal(x["features"][0], ds[0]["features"])


def test_caption_regions_are_cut_to_max_boxes_in_both_paths():
    rec = _region_record(150, 4)
    x = caption.featurize(rec, "region", DataConfig(max_boxes=100))
    assert x["features"].shape == (1, 100, 4)
    np.testing.assert_array_equal(x["features"][0].numpy(), rec["features"][:100])


def test_vqa_featurize_pads_and_masks_like_the_dataset():
    rec = _region_record(3, 4)
    x = vqa.featurize(rec, "region", 5)
    assert x["features"].shape == (1, 5, 4) and x["mask"][0].tolist() == [True] * 3 + [False] * 2
    np.testing.assert_array_equal(x["boxes"][0, :3].numpy(), rec["boxes"])
