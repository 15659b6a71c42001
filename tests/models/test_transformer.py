"""The Transformer captioner: cached decoding equals the parallel forward, masks, image-major batches, the
exposed attention, the ORT box geometry and its input columns, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from butd.datasets.captions import CaptionDataError, DataConfig, featurize
from butd.errors import UserError
from butd.models.registry import build_caption_model
from butd.models.transformer import box_relations, sinusoid

V, D = 13, 8
TINY = {"d_model": 16, "d_ff": 32, "heads": 2, "enc_layers": 2, "dec_layers": 3, "dropout": 0.0, "feat_dropout": 0.0}


def _model(seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return build_caption_model("transformer", V, D, {**TINY, **cfg}).eval()


def _boxes(b: int, k: int, g: torch.Generator) -> torch.Tensor:
    """Random boxes x1 y1 x2 y2 inside [0, 1]."""
    xy = torch.rand(b, k, 2, generator=g) * 0.6
    wh = torch.rand(b, k, 2, generator=g) * 0.4 + 0.05
    return torch.cat([xy, xy + wh], -1)


def _batch(geometry: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 6, D, generator=g)
    if geometry:
        feats = torch.cat([feats, _boxes(3, 6, g)], -1)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 2:] = False
    caps = torch.tensor([[1, 4, 5, 6, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0, 0], [1, 9, 10, 11, 12, 4, 5, 2]])
    return {"features": feats, "mask": mask, "captions": caps}


@pytest.mark.parametrize("geometry", [False, True])
def test_cached_steps_give_the_log_probabilities_of_the_parallel_forward(geometry: bool) -> None:
    model = _model(geometry=geometry)
    batch = _batch(geometry)
    with torch.no_grad():
        out = model(batch)
        full = torch.log_softmax(out["logits"], -1)
        state = model.init_state(batch["features"], batch["mask"])
        for t in range(batch["captions"].size(1) - 1):
            logprobs, state, attn = model.step(batch["captions"][:, t], state, batch["features"], batch["mask"])
            torch.testing.assert_close(logprobs, full[:, t], rtol=0, atol=1e-5)
            torch.testing.assert_close(attn, out["attn"][:, t], rtol=0, atol=1e-6)
            assert state["k0"].shape == (3, 2, t + 1, 8) and state["ck2"].shape == (3, 2, 6, 8)  # [B, H, t, d_k]


def test_padded_regions_change_nothing() -> None:
    model = _model(geometry=True)
    batch = _batch(geometry=True)
    with torch.no_grad():
        ref = model(batch)
        pad = ~batch["mask"]
        noisy = batch["features"].clone()
        noisy[pad] = float("nan")  # even NaN in the padding (content and boxes) cannot leak
        torch.testing.assert_close(model({**batch, "features": noisy})["logits"], ref["logits"])
        # three more padded regions of garbage: the same captions' scores
        wider = torch.cat([batch["features"], torch.full((3, 3, D + 4), 5.0)], 1)
        mask = torch.cat([batch["mask"], torch.zeros(3, 3, dtype=torch.bool)], 1)
        out = model({**batch, "features": wider, "mask": mask})
        torch.testing.assert_close(out["logits"], ref["logits"], rtol=0, atol=1e-5)
        assert torch.all(out["attn"][:, :, 6:] == 0) and torch.all(ref["attn"][0, :, 4:] == 0)


def test_image_major_batches_encode_each_image_once() -> None:
    model = _model()
    batch = _batch()
    index = torch.tensor([0, 0, 1, 2, 2, 2])  # caption rows -> image rows
    caps = batch["captions"][[0, 1, 1, 2, 0, 1]]
    per_caption = {"features": batch["features"][index], "mask": batch["mask"][index], "captions": caps}
    image_major = {**batch, "captions": caps, "image_index": index}
    with torch.no_grad():
        want = model(per_caption)
        got = model(image_major)
        torch.testing.assert_close(got["logits"], want["logits"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["attn"], want["attn"], rtol=0, atol=1e-6)
        # scheduled sampling's step loop (a feed hook) sees the same rows
        fed = model.unroll(image_major, lambda t, words, prev: words)
        torch.testing.assert_close(fed["logits"], want["logits"], rtol=0, atol=1e-5)


def test_attention_is_the_chosen_layer_and_head() -> None:
    base = _model(seed=3)
    batch = _batch()
    with torch.no_grad():
        mean_last = base(batch)["attn"]
        heads = []
        for h in range(2):
            m = _model(attn_head=h)
            m.load_state_dict(base.state_dict())
            heads.append(m(batch)["attn"])
        torch.testing.assert_close((heads[0] + heads[1]) / 2, mean_last)
        assert not torch.allclose(heads[0], heads[1])
        first = _model(attn_layer=0)
        first.load_state_dict(base.state_dict())
        assert not torch.allclose(first(batch)["attn"], mean_last)
        torch.testing.assert_close(first(batch)["logits"], base(batch)["logits"])  # only what is exposed differs


def test_box_relations_follow_ort() -> None:
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.4], [0.3, 0.1, 0.9, 0.9]]])
    emb = box_relations(boxes, dim=64, wave=1000.0)
    assert emb.shape == (1, 2, 2, 64)
    w = torch.tensor([1.4, 1.6])
    h = torch.tensor([1.2, 1.8])  # x2 - x1 + 1, y2 - y1 + 1 (ORT)
    cx, cy = torch.tensor([0.3, 0.6]), torch.tensor([0.3, 0.5])
    raw = torch.tensor([math.log(abs(cx[0] - cx[1]) / w[0]), math.log(abs(cy[0] - cy[1]) / h[0]),
                        math.log(w[0] / w[1]), math.log(h[0] / h[1])])
    # pair (0, 1): the 8 frequencies of coordinate c sit at 8c .. 8c+7 (sines), then the cosines from 32 on
    freq = 1000.0 ** (-torch.arange(8) / 8)
    want = (100 * raw[:, None] * freq).flatten()
    torch.testing.assert_close(emb[0, 0, 1], torch.cat([want.sin(), want.cos()]))
    # a box with itself: |d| / w clamps at 1e-3 and the size ratios are 1
    diag = (100 * torch.tensor([math.log(1e-3)] * 2 + [0.0, 0.0])[:, None] * freq).flatten()
    torch.testing.assert_close(emb[0, 1, 1], torch.cat([diag.sin(), diag.cos()]))


def test_geometry_is_relative_and_used() -> None:
    model = _model(geometry=True)
    batch = _batch(geometry=True)
    with torch.no_grad():
        ref = model(batch)["logits"]
        moved = batch["features"].clone()
        moved[..., D:] += torch.tensor([0.05, 0.03, 0.05, 0.03])  # every box shifted alike
        torch.testing.assert_close(model({**batch, "features": moved})["logits"], ref, rtol=0, atol=1e-4)
        one = batch["features"].clone()
        one[2, 0, D:] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # one real box changed
        assert not torch.allclose(model({**batch, "features": one})["logits"][2], ref[2], atol=1e-4)
        assert torch.equal(model({**batch, "features": one})["logits"][:2], ref[:2])


def test_feature_columns_must_match_the_geometry_setting() -> None:
    with pytest.raises(UserError, match=r"model.geometry needs the region boxes .*data.boxes: true"):
        _model(geometry=True)(_batch(geometry=False))
    with pytest.raises(UserError, match=r"carry box columns .*model.geometry is off"):
        _model()(_batch(geometry=True))
    wrong = _batch()
    with pytest.raises(UserError, match="features have 5 columns, the model takes 8"):
        _model().init_state(wrong["features"][..., :5], wrong["mask"])


@pytest.mark.parametrize("bad,match", [({"heads": 3}, "not a multiple of heads"),
                                       ({"dec_layers": 0}, "at least one encoder and one decoder layer"),
                                       ({"attn_layer": 3}, "attn_layer 3 is not a decoder layer"),
                                       ({"attn_head": 2}, "attn_head 2 is not a head"),
                                       ({"geometry": True, "geometry_dim": 12}, "not a positive multiple of 8")])
def test_bad_sizes_are_one_line_errors(bad: dict, match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        _model(**bad)
    assert err.value.usage and "\n" not in str(err.value)


def test_reference_shapes_and_init() -> None:
    model = build_caption_model("transformer", 100, 2048)
    cfg = model.config
    assert (cfg.d_model, cfg.d_ff, cfg.heads, cfg.enc_layers, cfg.dec_layers, cfg.dropout, cfg.feat_dropout) == \
        (512, 2048, 8, 6, 6, 0.1, 0.5)
    assert len(model.encoder) == 6 and len(model.decoder) == 6 and model.att_embed[0].in_features == 2048
    # Xavier-uniform on the encoder-decoder's matrices: |w| <= sqrt(6 / (fan_in + fan_out))
    q = model.decoder[0].self_attn.q.weight.detach()
    assert float(q.abs().max()) <= math.sqrt(6 / 1024)
    assert float(q.std()) == pytest.approx(math.sqrt(2 / 1024), rel=0.05)
    pe = sinusoid(torch.arange(3), 4)
    torch.testing.assert_close(pe[2], torch.tensor([math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]))


def test_data_boxes_append_normalised_boxes_for_region_stores_only() -> None:
    rec = {"features": np.ones((3, 2), np.float32), "boxes": np.array([[0, 0, 50, 20], [10, 5, 100, 40],
                                                                        [-5, 0, 120, 40]], np.float32),
           "image_w": np.int32(100), "image_h": np.int32(40)}
    out = featurize(rec, "region", DataConfig(boxes=True, max_boxes=2))
    np.testing.assert_allclose(out, [[1, 1, 0, 0, 0.5, 0.5], [1, 1, 0.1, 0.125, 1.0, 1.0]])
    clipped = featurize(rec, "region", DataConfig(boxes=True))[2, 2:]
    np.testing.assert_allclose(clipped, [0, 0, 1, 1])
    assert featurize(rec, "region", DataConfig()).shape == (3, 2)
    with pytest.raises(CaptionDataError, match="data.boxes needs a region store"):
        featurize({"features": np.ones((4, 2), np.float32)}, "grid", DataConfig(boxes=True))
