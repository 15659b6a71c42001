"""Parity of our bua-r101 graph with detectron2's R101-C4 built with py-bottom-up-attention's values.

Runs only where detectron2 is installed (skipped otherwise). Works with stock detectron2 (the two
VG modifications are applied to the built modules exactly as py-bottom-up-attention does: Caffe
max-pool in the stem; res5 block 1 stride 1 and dilation 2 in every res5 3x3 conv) and with the
py-bottom-up-attention fork (its own CAFFE_MAXPOOL / RES5HALVE / ATTR options, then the attribute
head is compared too). Both models get the same random weights through the shared key names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

d2 = pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, ImageList  # noqa: E402

from butd.extract.detector import Preprocessor, random_detector  # noqa: E402

RTOL = 1e-4


def d2_config():
    """configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml (+ Base-RCNN-C4), inline."""
    cfg = get_cfg()
    m = cfg.MODEL
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.DEVICE = "cpu"
    m.MASK_ON = False
    m.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]
    m.PIXEL_STD = [1.0, 1.0, 1.0]
    m.BACKBONE.NAME = "build_resnet_backbone"
    m.RESNETS.DEPTH = 101
    m.RESNETS.OUT_FEATURES = ["res4"]
    m.RESNETS.NORM = "FrozenBN"
    m.RESNETS.STRIDE_IN_1X1 = True
    m.ANCHOR_GENERATOR.SIZES = [[64, 128, 256, 512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["res4"]
    m.RPN.PRE_NMS_TOPK_TEST = 6000
    m.RPN.POST_NMS_TOPK_TEST = 300  # py-bottom-up-attention demo value (Caffe TEST.RPN_POST_NMS_TOP_N)
    m.RPN.NMS_THRESH = 0.7
    m.ROI_HEADS.NAME = "Res5ROIHeads"
    m.ROI_HEADS.IN_FEATURES = ["res4"]
    m.ROI_HEADS.NUM_CLASSES = 1600
    m.ROI_BOX_HEAD.POOLER_TYPE = "ROIPool"
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    fork = hasattr(m, "CAFFE_MAXPOOL")
    if fork:  # py-bottom-up-attention's detectron2
        m.CAFFE_MAXPOOL = True
        m.PROPOSAL_GENERATOR.HID_CHANNELS = 512
        m.ROI_BOX_HEAD.RES5HALVE = False
        m.ROI_BOX_HEAD.ATTR = True
        m.ROI_BOX_HEAD.NUM_ATTRS = 400
    else:
        m.RPN.CONV_DIMS = [512]
    return cfg, fork


def patch_stock(model) -> None:
    """The VG modifications, applied to a stock detectron2 model."""
    stem = model.backbone.stem

    def caffe_stem(x):
        x = F.relu_(stem.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)

    stem.forward = caffe_stem
    res5 = model.roi_heads.res5
    res5[0].conv1.stride = (1, 1)
    res5[0].shortcut.stride = (1, 1)
    for block in res5:
        block.conv2.padding = (2, 2)
        block.conv2.dilation = (2, 2)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ours = random_detector("d2", seed=0).eval()
    cfg, fork = d2_config()
    theirs = build_model(cfg).eval()
    if not fork:
        patch_stock(theirs)
    sd = ours.state_dict()
    res = theirs.load_state_dict(sd, strict=False)
    attr_keys = {k for k in sd if k.startswith(("roi_heads.box_predictor.cls_embedding",
                                                "roi_heads.box_predictor.fc_attr",
                                                "roi_heads.box_predictor.attr_score"))}
    assert not [k for k in res.missing_keys if not k.startswith("pixel_")], res.missing_keys
    assert set(res.unexpected_keys) <= (set() if fork else attr_keys), res.unexpected_keys
    return ours, theirs, fork


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8).repeat(10, 0).repeat(10, 1)
    p = Preprocessor()(img)
    return torch.from_numpy(p["image"])[None], p


def close(a, b):
    scale = float(b.abs().max()) or 1.0
    torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * scale)


@torch.inference_mode()
def test_backbone_rpn_pooled_and_scores_match(pair, image):
    ours, theirs, fork = pair
    x, _ = image
    h, w = x.shape[-2:]
    f_ours = ours.backbone(x)
    f_theirs = theirs.backbone(x)["res4"]
    close(f_ours, f_theirs)

    props_ours = ours.proposal_generator(f_theirs, [(h, w)], [1.0])[0]
    prop_theirs, _ = theirs.proposal_generator(ImageList(x, [(h, w)]), {"res4": f_theirs}, None)
    props_theirs = prop_theirs[0].proposal_boxes.tensor
    assert props_ours.shape == props_theirs.shape
    close(props_ours, props_theirs)

    pooled_ours = ours.roi_heads.pooled_features(f_theirs, [props_theirs])
    pooled_theirs = theirs.roi_heads._shared_roi_transform([f_theirs], [Boxes(props_theirs)]).mean(dim=[2, 3])
    close(pooled_ours, pooled_theirs)

    logits, deltas, attr = ours.roi_heads.box_predictor(pooled_theirs)
    out = theirs.roi_heads.box_predictor(pooled_theirs)
    if fork:
        t_logits, t_attr, t_deltas = out
        close(attr, t_attr)
    else:
        t_logits, t_deltas = out
    close(logits, t_logits)
    close(deltas, t_deltas)
    close(F.softmax(logits, -1), F.softmax(t_logits, -1))


# =================================================================================================
# End to end: photo -> preprocessing -> proposals -> selection -> stored record, through the CLI.
# detectron2's own model (seeded weights) is saved by detectron2's Checkpointer as a real state dict
# (cell anchors and pixel mean/std made persistent, as detectron2 v0.2.1 saved them), converted with
# `butd weights convert`, extracted with `butd extract`; the reference is detectron2's pipeline
# (d2 layout) or an independent cv2 + bottom-up-attention.pytorch reference (caffe layout).
# =================================================================================================
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from torchvision.ops import nms  # noqa: E402

from butd.extract.images import load_image  # noqa: E402
from butd.shards.compare import compare_records, pair_iou  # noqa: E402

IOU_MIN, FEAT_RTOL = 0.99, 1e-3
ATTR = ("cls_embedding", "fc_attr", "attr_score")
RESULTS: dict[str, list] = {}


def _butd(*args, cwd=None):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", "from butd.cli import main; main()", *map(str, args)],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=3600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def make_photos(d: Path, shipped: Path) -> Path:
    """The five shipped photos plus five other real photos that packages ship, cut to odd sizes
    (lossless PNGs): each exercises a different branch of the size rules."""
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from butd.demo import shipped_photos

    src = shipped_photos(shipped)
    if len(src) < 5:
        pytest.skip("needs the shipped photos of the [dev] extras")
    for p in src:
        Image.fromarray(load_image(p).array).save(d / f"{p.stem}.png")
    ski = Path(skimage.__file__).parent / "data"

    def photo(name):
        return Image.fromarray(load_image(ski / name).array)

    odd = {"hubble_crop_600x733": photo("hubble_deep_field.jpg").crop((100, 200, 833, 800)),  # short 600: no resize
           "retina_crop_599x1001": photo("retina.jpg").crop((200, 400, 1201, 999)),  # capped by 1.7 px: x0.998
           "motorcycle_crop_217x389": photo("motorcycle_left.png").crop((300, 150, 689, 367)),  # upscaled x2.76
           "rocket_crop_97x640": photo("rocket.jpg").crop((0, 200, 640, 297)),  # extreme aspect: capped, x1.56
           "flower_1500x700": Image.fromarray(load_sample_image("flower.jpg")).resize((700, 1500))}  # tall, capped
    for k, im in odd.items():
        assert im.size == tuple(int(v) for v in k.rsplit("_", 1)[1].split("x")[::-1]), (k, im.size)
        im.save(d / f"{k}.png")
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("shipped"))


def _d2_model(seed):
    ours = random_detector("d2", seed=seed).eval()
    cfg, fork = d2_config()
    model = build_model(cfg).eval()
    if not fork:
        patch_stock(model)
        bp = model.roi_heads.box_predictor  # the attribute head py-bottom-up-attention adds
        bp.cls_embedding, bp.fc_attr, bp.attr_score = (ours.roi_heads.box_predictor.cls_embedding,
                                                      ours.roi_heads.box_predictor.fc_attr,
                                                      ours.roi_heads.box_predictor.attr_score)
    model.load_state_dict(ours.state_dict(), strict=False)
    return model


def _persist_buffers(model):
    """Make detectron2 0.6's non-persistent cell anchors / pixel mean+std persistent (v0.2.1 saved them)."""
    model.proposal_generator.anchor_generator.cell_anchors._non_persistent_buffers_set.clear()
    model._non_persistent_buffers_set.clear()


@pytest.fixture(scope="module")
def d2_setup(tmp_path_factory):
    from detectron2.checkpoint import DetectionCheckpointer

    d = tmp_path_factory.mktemp("d2ck")
    model = _d2_model(seed=3)
    _persist_buffers(model)
    DetectionCheckpointer(model, save_dir=str(d)).save("model_final", __author__="butd-parity")
    saved = torch.load(d / "model_final.pth", weights_only=True)
    assert "proposal_generator.anchor_generator.cell_anchors.0" in saved["model"] and "pixel_mean" in saved["model"]
    out = _butd("weights", "convert", d / "model_final.pth", d / "w.safetensors")
    assert "layout d2" in out
    return model, d / "w.safetensors"


def _extract(photos, weights, out, *extra):
    _butd("extract", "--dataset", "folder", "--root", photos, "--extractor", "bua-r101", "--weights", weights,
          "--out", out, "--workers", "1", "--threads", "2", "--batch-size", "2", "--no-progress", *extra)
    from butd.shards import FeatureStore

    store = FeatureStore(out)
    man = json.loads((Path(out) / "manifest.json").read_text())
    return {k: store[k] for k in store}, man


def _compare(name, got, ref, layout):
    """Same count; every box matched one-to-one at IoU >= 0.99; equal ids; features within 1e-3.

    The matching and the measures are `butd shards compare`'s (`butd.shards.compare.compare_records`): one
    implementation serves both. IoU is measured with "+1" areas (pad=1, as Caffe measures overlap): random
    weights make some boxes thinner than a pixel, where plain IoU turns a 1e-4 px difference into a 1% IoU
    change. The plain IoU and the largest coordinate difference are reported alongside."""
    n = int(got["num_boxes"])
    assert n == len(ref["boxes"]), f"{name}: {n} boxes vs {len(ref['boxes'])}"
    ref = {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in ref.items()}
    cmp = compare_records(name, got, ref, pad=1.0)
    match = np.asarray(cmp.match)
    a, b = np.asarray(got["boxes"], np.float32), ref["boxes"].astype(np.float32)
    best = pair_iou(a, b, pad=1.0)[np.arange(n), match]
    assert cmp.min_iou >= IOU_MIN, f"{name}: min IoU {cmp.min_iou}"
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(1)  # noqa: E731
    empty = (area(a) == 0) & (area(b[match]) == 0)  # plain IoU 0/0: reported as nan (PARITY.md)
    plain = float(np.where(empty, np.nan, pair_iou(a, b)[np.arange(n), match]).min())
    coord = float(np.abs(a - b[match]).max())
    rel = cmp.max_feature_diff
    assert rel <= FEAT_RTOL, f"{name}: max relative feature difference {rel}"
    assert cmp.objects_agree == 1.0 and cmp.attributes_agree == 1.0, f"{name}: labels differ {cmp.relabelled}"
    RESULTS.setdefault(layout, []).append((name, n, int((best >= IOU_MIN).sum()), cmp.min_iou, plain, coord, rel,
                                           _TIES.pop("last", 0)))


def _all(check, photos, limit=None):
    """Run ``check`` on every photo; fail at the end with every photo's failure (so all are measured)."""
    fails = []
    for p in sorted(photos.glob("*.png"))[:limit]:
        try:
            check(p)
            print(f"  ok   {p.stem}", flush=True)  # live with `make parity` (pytest -s)
        except AssertionError as e:
            fails.append(str(e).splitlines()[0])
            print(f"  FAIL {fails[-1]}", flush=True)
    assert not fails, "; ".join(fails)


def _attrs(w_emb, fc, score, pooled, logits, bg_first):
    """The VG attribute head: embedding of the argmax class ++ pooled -> fc ReLU -> scores."""
    x = torch.cat([pooled, w_emb[logits.argmax(1)]], 1)
    a = torch.relu(x @ fc[0].t() + fc[1]) @ score[0].t() + score[1]
    p = torch.softmax(a, 1)[:, 1:] if bg_first else torch.softmax(a[:, :-1], 1)
    return p.max(1)


def _nms(b, scores, t):
    """Greedy NMS visiting equal scores lower index first: the originals' sorts are not stable, so
    their order among ties is implementation-defined; butd fixes this one (features_spec.md 10.4)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    o = torch.tensor(order, dtype=torch.long)
    return o[nms(b[o], torch.linspace(1.0, 0.0, len(o)), t)]


def _caffe_rule(boxes_orig, fg, offset):
    """generate_tsv.py: per-class NMS 0.3, max kept score per box, >= 0.2, 10..100 (ties: lower index)."""
    b = boxes_orig.clone()
    b[:, 2:] += offset
    conf = torch.zeros(len(b))
    for c in range(fg.shape[1]):
        k = _nms(b, fg[:, c], 0.3)
        conf[k] = torch.maximum(conf[k], fg[k, c])
    order = torch.tensor(sorted(range(len(conf)), key=lambda i: (-float(conf[i]), i)), dtype=torch.long)
    keep = torch.nonzero(conf >= 0.2).flatten()
    sel = order[:10] if len(keep) < 10 else order[:100] if len(keep) > 100 else keep
    _TIES["last"] = _ties_at_cut(conf, sel)
    return sel


_TIES: dict = {}


def _ties_at_cut(score, sel):
    """How many kept entries share their score with an entry left out (where the tie rule decided)."""
    out = torch.ones(len(score), dtype=torch.bool)
    out[sel] = False
    left = set(score[out].tolist())
    return sum(v in left for v in score[sel].tolist())


_D2_FORWARD: dict = {}


@torch.inference_mode()
def _d2_forward(model, rgb):
    """detectron2's preprocessing, backbone, RPN, RoI pooling and box predictor (cached per photo)."""
    from detectron2.data import transforms as T

    key = (rgb.shape, hash(rgb.tobytes()))
    if key not in _D2_FORWARD:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        im = T.ResizeShortestEdge([600, 600], 1000).get_transform(bgr).apply_image(bgr)
        images = model.preprocess_image([{"image": torch.as_tensor(im.astype("float32").transpose(2, 0, 1))}])
        feats = model.backbone(images.tensor)
        props, _ = model.proposal_generator(images, feats, None)
        pooled = model.roi_heads._shared_roi_transform([feats["res4"]], [props[0].proposal_boxes]).mean(dim=[2, 3])
        logits, deltas = model.roi_heads.box_predictor(pooled)[:2]
        _D2_FORWARD[key] = (images.image_sizes[0], props, pooled, logits, deltas)
    return _D2_FORWARD[key]


@torch.inference_mode()
def d2_reference(model, rgb, policy="caffe"):
    """py-bottom-up-attention's pipeline with detectron2's own modules."""
    h, w = rgb.shape[:2]
    (ih, iw), props, pooled, logits, deltas = _d2_forward(model, rgb)
    bp = model.roi_heads.box_predictor
    probs = torch.softmax(logits, 1)[:, :-1]

    def to_orig(b):  # detector_postprocess without its final drop of empty boxes: the maxnms script
        bb = Boxes(b.clone())  # selects features before that drop, so boxes and features go out of step
        bb.scale(w / iw, h / ih)  # on images where a regressed box is clipped empty; butd keeps them aligned
        bb.clip((h, w))
        return bb.tensor

    if policy == "caffe":
        boxes_orig = to_orig(props[0].proposal_boxes.tensor)
        keep = _caffe_rule(boxes_orig, probs, 0.0)
        boxes = boxes_orig[keep]
    else:  # detectron2_mscoco_proposal_maxnms.py
        reg = bp.predict_boxes((logits, deltas), props)[0].view(-1, 1600, 4)
        reg = Boxes(reg.reshape(-1, 4))
        reg.clip((ih, iw))
        reg = reg.tensor.view(-1, 1600, 4)
        mx, cls = probs.max(1)
        mb = reg[torch.arange(len(reg)), cls]
        for t in np.arange(0.3, 1.0, 0.1):
            keep = _nms(mb, mx, float(t))[:36]
            if len(keep) >= 36:
                break
        _TIES["last"] = _ties_at_cut(mx, keep)
        boxes = to_orig(mb[keep])
    conf, oid = probs[keep].max(1)
    aconf, aid = _attrs(bp.cls_embedding.weight, (bp.fc_attr.weight, bp.fc_attr.bias),
                        (bp.attr_score.weight, bp.attr_score.bias), pooled[keep], logits[keep], False)
    return {"boxes": boxes, "features": pooled[keep], "objects_id": oid, "attrs_id": aid}


def test_end_to_end_d2_layout_matches_detectron2(d2_setup, photos, tmp_path):
    model, weights = d2_setup
    got, man = _extract(photos, weights, tmp_path / "store")
    cfg = man["extractor"]["details"]
    assert cfg["layout"] == "d2" and cfg["preprocess"] == "d2" and cfg["boxes_policy"]["name"] == "caffe"
    assert len(got) == 10
    _all(lambda p: _compare(p.stem, got[p.stem], d2_reference(model, load_image(p).array), "d2"), photos)


def test_airsplay_36_policy_matches_the_maxnms_script(d2_setup, photos):
    from butd.extract.detector import BUTDExtractor

    model, weights = d2_setup
    ex = BUTDExtractor(weights, boxes_policy="airsplay-36")

    def one(p):
        rgb = load_image(p).array
        _compare(p.stem, ex.extract([ex.preprocess(rgb)])[0], d2_reference(model, rgb, "airsplay-36"),
                 "d2 airsplay-36")

    _all(one, photos)


def _caffe_state(model):
    """A bottom-up-attention.pytorch-layout state dict (2A softmax RPN, 1601 box deltas, its attribute
    names, BN step counters, detectron2 v0.2.1 cell anchors for SIZES [[4, 8, 16, 32]]) with the d2
    model's backbone and heads; returns it and detectron2's anchor generator for those sizes."""
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    g = torch.Generator().manual_seed(11)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    rpn = "proposal_generator.rpn_head"
    sd[f"{rpn}.objectness_logits.weight"] = torch.randn(24, 512, 1, 1, generator=g) * 0.01
    sd[f"{rpn}.objectness_logits.bias"] = torch.randn(24, generator=g) * 0.01
    sd[f"{rpn}.anchor_deltas.bias"].view(12, 4)[:, 2:] += float(np.log(16.0))  # proposals ~16x the anchors
    bp = "roi_heads.box_predictor"
    sd[f"{bp}.bbox_pred.weight"] = torch.cat([torch.zeros(4, 2048), sd[f"{bp}.bbox_pred.weight"]])
    sd[f"{bp}.bbox_pred.bias"] = torch.cat([torch.zeros(4), sd[f"{bp}.bbox_pred.bias"]])
    for old, new in zip(ATTR, ("cls_embed", "attr_linear1", "attr_linear2")):
        for k in [k for k in sd if k.startswith(f"{bp}.{old}.")]:
            sd[k.replace(f".{old}.", f".{new}.")] = sd.pop(k)
    gen = DefaultAnchorGenerator(sizes=[[4, 8, 16, 32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16], offset=0.0)
    sd["proposal_generator.anchor_generator.cell_anchors.0"] = list(gen.cell_anchors)[0].clone()
    sd["backbone.res4.0.conv1.norm.num_batches_tracked"] = torch.tensor(270000)
    return sd, gen


@pytest.fixture(scope="module")
def caffe_setup(d2_setup, tmp_path_factory):
    """The caffe-layout checkpoint, saved as bottom-up-attention.pytorch would, converted by the CLI."""
    model, _ = d2_setup
    sd, gen = _caffe_state(model)
    d = tmp_path_factory.mktemp("caffeck")
    torch.save({"model": sd, "__author__": "butd-parity"}, d / "bua-caffe.pth")
    out = _butd("weights", "convert", d / "bua-caffe.pth", d / "w.safetensors")
    assert "layout caffe" in out
    return model, sd, gen, d / "w.safetensors"


@torch.inference_mode()
def caffe_reference(model, sd, gen, rgb):
    """bottom-up-attention.pytorch with the Caffe blob: cv2 resize by the scale, BUA RPN (+1 boxes,
    detectron2 anchors, min size), RoI pool + res5, generate_tsv selection. Written from the facts."""
    import cv2

    im = rgb[:, :, ::-1].astype(np.float32) - np.asarray([102.9801, 115.9465, 122.7717], np.float32)
    h, w = im.shape[:2]
    s = 600.0 / min(h, w)
    if np.round(s * max(h, w)) > 1000:
        s = 1000.0 / max(h, w)
    blob = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(blob.transpose(2, 0, 1)))[None]
    ih, iw = x.shape[-2:]
    feat = model.backbone(x)["res4"]
    rpn = "proposal_generator.rpn_head"
    t = F.relu(F.conv2d(feat, sd[f"{rpn}.conv.weight"], sd[f"{rpn}.conv.bias"], padding=1))
    obj = F.conv2d(t, sd[f"{rpn}.objectness_logits.weight"], sd[f"{rpn}.objectness_logits.bias"])
    dl = F.conv2d(t, sd[f"{rpn}.anchor_deltas.weight"], sd[f"{rpn}.anchor_deltas.bias"])
    fh, fw = obj.shape[-2:]
    score = F.softmax(obj.view(1, 2, 12, fh, fw), 1)[:, 1].permute(0, 2, 3, 1).reshape(-1)
    d = dl.view(1, 12, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(-1, 4)
    a = gen([feat])[0].tensor
    aw, ah = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    cx, cy = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
    pcx, pcy = d[:, 0] * aw + cx, d[:, 1] * ah + cy
    pw, ph = torch.exp(d[:, 2].clamp(max=np.log(1000 / 16))) * aw, torch.exp(d[:, 3].clamp(max=np.log(1000 / 16))) * ah
    b = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)
    b = torch.stack([b[:, 0].clamp(0, iw - 1), b[:, 1].clamp(0, ih - 1), b[:, 2].clamp(0, iw - 1),
                     b[:, 3].clamp(0, ih - 1)], 1)
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    ok &= (b[:, 2] - b[:, 0] + 1 > 16 * s) & (b[:, 3] - b[:, 1] + 1 > 16 * s)
    b, score = b[ok], score[ok]
    score, order = score.sort(descending=True)
    b, score = b[order[:6000]], score[:6000]
    props = b[nms(torch.cat([b[:, :2], b[:, 2:] + 1], 1), score, 0.7)[:300]]
    pooled = model.roi_heads._shared_roi_transform([feat], [Boxes(props)]).mean(dim=[2, 3])
    bp = "roi_heads.box_predictor"
    logits = pooled @ sd[f"{bp}.cls_score.weight"].t() + sd[f"{bp}.cls_score.bias"]
    probs = torch.softmax(logits, 1)[:, 1:]
    keep = _caffe_rule(props / s, probs, 1.0)
    conf, oid = probs[keep].max(1)
    aconf, aid = _attrs(sd[f"{bp}.cls_embed.weight"], (sd[f"{bp}.attr_linear1.weight"], sd[f"{bp}.attr_linear1.bias"]),
                        (sd[f"{bp}.attr_linear2.weight"], sd[f"{bp}.attr_linear2.bias"]), pooled[keep], logits[keep],
                        True)
    return {"boxes": props[keep] / s, "features": pooled[keep], "objects_id": oid, "attrs_id": aid}


def test_end_to_end_caffe_layout_matches_the_cv2_reference(caffe_setup, photos, tmp_path):
    model, sd, gen, weights = caffe_setup
    got, man = _extract(photos, weights, tmp_path / "store")
    cfg = man["extractor"]["details"]
    assert cfg["layout"] == "caffe" and cfg["preprocess"] == "caffe" and cfg["rpn"]["anchor_sizes"] == [4, 8, 16, 32]
    _all(lambda p: _compare(p.stem, got[p.stem], caffe_reference(model, sd, gen, load_image(p).array), "caffe"),
         photos)


def test_write_parity_table():
    """Per-photo figures of this run (PARITY_OUT=FILE writes them as a markdown table)."""
    assert RESULTS, "run with the end-to-end tests"
    lines = ["| layout / policy | photo | boxes | matched (IoU+1 >= 0.99) | min IoU+1 | min plain IoU | "
             "max coord diff (px) | max feature rel diff | kept boxes tied at the cut |",
             "|---|---|---|---|---|---|---|---|---|"]
    for layout, rows in RESULTS.items():
        for name, n, m, iou, plain, coord, rel, ties in rows:
            lines.append(f"| {layout} | {name} | {n} | {m}/{n} | {iou:.5f} | {plain:.4f} | {coord:.1e} | {rel:.1e} "
                         f"| {ties} |")
    if os.environ.get("PARITY_OUT"):
        Path(os.environ["PARITY_OUT"]).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
