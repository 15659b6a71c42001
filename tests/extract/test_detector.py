"""The bua-r101 detector graph on CPU with random weights (small images, few proposals)."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

from butd.extract import bua_heads as H
from butd.extract.detector import PIXEL_MEANS_BGR, RANDOM_WARNING, BUTDExtractor, Preprocessor
from butd.extract.resnet_c4 import FrozenBatchNorm2d, Stem, caffe_pool_size
from butd.shards.spec import validate_record

torch.set_num_threads(2)
SMALL = dict(rpn={"post_nms_topk": 12}, test_scale=160, test_max_size=320, seed=0)


def _image(seed: int, h: int = 200, w: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((10, 10, 1), np.uint8))[:h, :w])


@pytest.fixture(scope="module")
def ex() -> BUTDExtractor:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        e = BUTDExtractor("random", device="cpu", **SMALL)
    assert any(RANDOM_WARNING in str(x.message) for x in w)  # loud warning for random weights
    return e


@pytest.fixture(scope="module")
def rec0(ex):
    return ex.extract([ex.preprocess(_image(0))])[0]


@contextlib.contextmanager
def settings(ex, *, proposals=None, **attrs):
    """Temporarily change extractor attributes / the RPN post-NMS top-k of the shared model."""
    cfg = ex.model.proposal_generator.cfg
    old = {k: getattr(ex, k) for k in attrs}, cfg["post_nms_topk"]
    try:
        for k, v in attrs.items():
            setattr(ex, k, v)
        if proposals:
            cfg["post_nms_topk"] = proposals
        yield ex
    finally:
        for k, v in old[0].items():
            setattr(ex, k, v)
        cfg["post_nms_topk"] = old[1]


def test_record_is_a_valid_region_record(rec0):
    rec = rec0
    bound = validate_record("region", rec)
    k = bound["k"]
    assert 10 <= k <= 12 and bound["D"] == 2048
    assert int(rec["image_w"]) == 300 and int(rec["image_h"]) == 200
    b = rec["boxes"]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 300).all() and (b[:, 3] <= 200).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert rec["objects_id"].min() >= 0 and rec["objects_id"].max() < 1600
    assert rec["attrs_id"].min() >= 0 and rec["attrs_id"].max() < 400
    assert ((rec["objects_conf"] > 0) & (rec["objects_conf"] <= 1)).all()
    assert ((rec["attrs_conf"] > 0) & (rec["attrs_conf"] <= 1)).all()
    assert np.isfinite(rec["features"]).all() and (rec["features"] >= 0).all()  # mean of ReLU outputs


def test_select_boxes_clamps_to_min_and_max():
    conf = torch.linspace(0, 1, 300)
    assert len(H.select_boxes(conf, 2.0, 10, 100)) == 10  # nothing passes -> top min_boxes
    assert len(H.select_boxes(conf, 0.0, 10, 100)) == 100  # all pass -> top max_boxes
    keep = H.select_boxes(conf, 0.9, 10, 100)  # 30 pass -> exactly those
    assert len(keep) == int((conf >= 0.9).sum()) and (conf[keep] >= 0.9).all()
    top = H.select_boxes(conf, 0.2, 36, 36)
    assert len(top) == 36 and torch.equal(conf[top], conf.sort(descending=True).values[:36])


def test_fixed_36_boxes_end_to_end(ex):
    with settings(ex, proposals=40, min_boxes=36, max_boxes=36):
        rec = ex.extract([ex.preprocess(_image(1))])[0]
    assert int(rec["num_boxes"]) == 36 and rec["features"].shape == (36, 2048)
    validate_record("region", rec)


def test_preprocess_resizes_like_caffe_and_subtracts_bgr_means():
    pre = Preprocessor()
    out = pre(np.zeros((200, 300, 3), np.uint8))
    assert out["image"].shape == (3, 600, 900) and out["scale"] == 3.0 and out["orig_hw"] == (200, 300)
    out = pre(np.zeros((100, 1000, 3), np.uint8))  # 600/100 would make the long side 6000 > 1000
    assert out["image"].shape == (3, 100, 1000) and out["scale"] == 1.0
    out = pre(np.zeros((480, 640, 3), np.uint8))
    assert out["image"].shape == (3, 600, 800)
    # scale 1 (short side 600, long side <= 1000): no interpolation, exact mean subtraction in BGR order
    rgb = np.random.default_rng(0).integers(0, 256, (600, 700, 3)).astype(np.uint8)
    out = pre(rgb)
    assert out["scale"] == 1.0
    expect = rgb[:, :, ::-1].astype(np.float32) - np.asarray(PIXEL_MEANS_BGR, np.float32)
    np.testing.assert_array_equal(out["image"], expect.transpose(2, 0, 1))
    # a constant colour stays constant through the bilinear resize
    out = pre(np.full((50, 60, 3), (10, 20, 30), np.uint8))
    want = np.array([30 - 102.9801, 20 - 115.9465, 10 - 122.7717], np.float32)
    np.testing.assert_allclose(out["image"].reshape(3, -1).T, np.broadcast_to(want, (600 * 720, 3)), atol=1e-4)


@pytest.mark.parametrize("n", list(range(7, 40)))
def test_caffe_max_pool_uses_ceil_rounding(n):
    x = torch.randn(1, 64, n, n + 3)
    stem = Stem(64)
    y = torch.nn.functional.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    expected = (int(np.ceil((n - 3) / 2)) + 1, int(np.ceil((n + 3 - 3) / 2)) + 1)
    assert y.shape[-2:] == expected == (caffe_pool_size(n), caffe_pool_size(n + 3))
    # the stem: 7x7/2 pad 3 conv then the Caffe pool
    img = torch.randn(1, 3, 2 * n, 2 * n)
    conv_out = (2 * n + 6 - 7) // 2 + 1
    assert stem(img).shape[-1] == caffe_pool_size(conv_out)


def test_caffe_pool_differs_from_floor_rounding():
    assert caffe_pool_size(8) == 4  # floor rounding would give 3


def test_frozen_bn_is_the_affine_formula():
    bn = FrozenBatchNorm2d(8)
    g = torch.Generator().manual_seed(0)
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).copy_(torch.randn(8, generator=g))
    bn.running_var.copy_(torch.rand(8, generator=g) + 0.1)
    x = torch.randn(2, 8, 5, 5, generator=g)
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    ref = (x - v(bn.running_mean)) / torch.sqrt(v(bn.running_var) + 1e-5) * v(bn.weight) + v(bn.bias)
    torch.testing.assert_close(bn(x), ref, rtol=1e-5, atol=1e-5)
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def _brute_nms(boxes, scores, thresh, offset):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            xx1, yy1 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            xx2, yy2 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0.0, xx2 - xx1 + offset) * max(0.0, yy2 - yy1 + offset)
            area = lambda b: (b[2] - b[0] + offset) * (b[3] - b[1] + offset)  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("vectorized", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_per_class_nms_matches_brute_force(offset, vectorized):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 60, (40, 2))
    wh = rng.uniform(2, 40, (40, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.dirichlet(np.ones(9), 40).astype(np.float32)[:, 1:]  # 8 "foreground" classes
    got = H.per_class_max_conf(torch.from_numpy(boxes), torch.from_numpy(scores), 0.3, offset,
                               vectorized=vectorized).numpy()
    ref = np.zeros(40, np.float32)
    for c in range(scores.shape[1]):
        for i in _brute_nms(boxes.tolist(), scores[:, c].tolist(), 0.3, offset):
            ref[i] = max(ref[i], scores[i, c])
    np.testing.assert_array_equal(got, ref)


def test_caffe_anchors_match_generate_anchors():
    # py-faster-rcnn generate_anchors() with scales (8, 16, 32), as listed in its header (0-based)
    ref = np.array([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], np.float32)
    np.testing.assert_array_equal(H.caffe_cell_anchors(16, (0.5, 1, 2), (8, 16, 32)).numpy(), ref)
    d2 = H.d2_cell_anchors((64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert d2.shape == (12, 4)
    wh = d2[:, 2:] - d2[:, :2]
    torch.testing.assert_close(wh.prod(1), torch.tensor([64.0, 128, 256, 512]).repeat_interleave(3) ** 2)


def test_given_boxes_pool_at_scaled_coordinates(ex):
    img = _image(2)
    p = ex.preprocess(img)
    boxes = np.array([[0, 0, 299, 199], [10.5, 20, 120, 90], [150, 50, 290, 180]], np.float32)
    rec = ex.extract([p], boxes=[boxes])[0]
    validate_record("region", rec)
    assert int(rec["num_boxes"]) == 3 and rec["features"].shape == (3, 2048)
    np.testing.assert_array_equal(rec["boxes"], boxes)
    m = ex.model
    with torch.inference_mode():
        feats = m.backbone(torch.from_numpy(p["image"])[None])
        manual = m.roi_heads.pooled_features(feats, [torch.from_numpy(boxes) * p["scale"]])
    np.testing.assert_allclose(rec["features"], manual.numpy(), rtol=1e-5, atol=1e-5)


def test_regressed_boxes_share_features_with_proposals(ex, rec0):
    with settings(ex, box_source="regressed"):
        rb = ex.extract([ex.preprocess(_image(0))])[0]
    np.testing.assert_array_equal(rec0["features"], rb["features"])
    np.testing.assert_array_equal(rec0["objects_id"], rb["objects_id"])
    bx = rb["boxes"]
    assert (bx[:, 0] >= 0).all() and (bx[:, 2] <= 300).all() and (bx[:, 3] <= 200).all()
    assert not np.array_equal(rec0["boxes"], bx)


def test_batch_equals_single(ex, rec0):
    pre = [ex.preprocess(_image(0)), ex.preprocess(_image(5)), ex.preprocess(_image(6, 180, 300))]
    batched = ex.extract(pre, batched=True)  # images 0 and 1 share one backbone call
    single = [rec0, ex.extract([pre[1]])[0], None]
    for x, y in zip(batched[:2], single[:2]):
        assert int(x["num_boxes"]) == int(y["num_boxes"])
        np.testing.assert_allclose(x["boxes"], y["boxes"], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(x["features"], y["features"], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(x["objects_id"], y["objects_id"])
    validate_record("region", batched[2])
    assert int(batched[2]["image_h"]) == 180


def test_config_and_registry():
    from butd.extract.registry import build_extractor, extractor_config

    with pytest.warns(UserWarning):
        e = build_extractor("bua-r101", extractor_config("bua-r101", mode="detect", weights="random",
                                                        device="cpu", min_boxes=36, max_boxes=36))
    assert isinstance(e, BUTDExtractor) and e.kind == "region" and e.weights_sha256 is None
    cfg = e.config_dict()
    assert cfg["min_boxes"] == cfg["max_boxes"] == 36 and cfg["layout"] == "d2"
    assert cfg["rpn"]["post_nms_topk"] == 300 and cfg["rpn"]["nms_thresh"] == 0.7
    import json

    json.dumps(cfg)


def test_rpn_layouts_produce_boxes_inside_image():
    for name in ("d2", "caffe"):
        rpn = H.RPN(H.LAYOUTS[name], {"post_nms_topk": 50})
        torch.nn.init.normal_(rpn.rpn_head.anchor_deltas.weight, std=0.01)
        with torch.inference_mode():
            props = rpn(torch.randn(2, 1024, 13, 19), [(200, 300), (190, 290)], [1.0, 1.0])
        off = H.LAYOUTS[name].pixel_offset
        for p, (h, w) in zip(props, [(200, 300), (190, 290)]):
            assert 0 < len(p) <= 50
            assert (p[:, 0] >= 0).all() and (p[:, 2] <= w - off).all() and (p[:, 3] <= h - off).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(ex):
    p = ex.preprocess(_image(8))
    cpu = ex.extract([p])[0]
    with pytest.warns(UserWarning):
        gpu_ex = BUTDExtractor("random", device="cuda", **SMALL)
    gpu = gpu_ex.extract([p])[0]
    validate_record("region", gpu)
    assert int(gpu["num_boxes"]) == int(cpu["num_boxes"])
    np.testing.assert_allclose(gpu["features"], cpu["features"], rtol=1e-2, atol=1e-2)


def test_empty_given_boxes_and_forward_boxes(ex):
    p = ex.preprocess(_image(9, 50, 60))
    rec = ex.extract([p], boxes=[np.zeros((0, 4), np.float32)])[0]
    validate_record("region", rec)
    assert rec["features"].shape == (0, 2048) and int(rec["num_boxes"]) == 0
    boxes = torch.tensor([[0.0, 0.0, 59.0, 49.0], [5.0, 5.0, 20.0, 30.0]])
    with torch.inference_mode():
        r = ex.model.forward_boxes(torch.from_numpy(p["image"]), boxes, p["scale"], p["orig_hw"])
    assert r["features"].shape == (2, 2048) and r["objects_id"].shape == (2,)
    np.testing.assert_array_equal(r["boxes"], boxes.numpy())


def test_roi_chunking_does_not_change_features(ex):
    feats = torch.randn(2, 1024, 8, 10)
    boxes = [torch.tensor([[0.0, 0.0, 100.0, 90.0], [10.0, 20.0, 60.0, 70.0], [3.0, 4.0, 150.0, 120.0]]),
             torch.tensor([[5.0, 5.0, 40.0, 40.0]])]
    with torch.inference_mode():
        a = ex.model.roi_heads.pooled_features(feats, boxes)
        b = ex.model.roi_heads.pooled_features(feats, boxes, chunk=1)
        c = ex.model.roi_heads.pooled_features(feats[1:], boxes[1:])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[3:], c, rtol=1e-5, atol=1e-5)
