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
