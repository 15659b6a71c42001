"""RPN, box/attribute predictor and box selection of the BUTD Visual Genome detector.

Two checkpoint layouts are supported (values looked up in the public repositories):

* ``"d2"`` — py-bottom-up-attention's ``faster_rcnn_from_caffe_attr.pkl`` (detectron2 conventions):
  RPN objectness has A channels (sigmoid); classes 0..1599 foreground, 1600 background; class-specific
  deltas for the 1600 foreground classes; attribute 400 = "no attribute"; ROI box weights (10, 10, 5, 5);
  anchors are detectron2's (sizes 64..512 px, offset 0), boxes without the "+1" pixel convention.
* ``"caffe"`` — bottom-up-attention.pytorch's ``bua-caffe-frcn-r101_with_attributes.pth`` (the Caffe
  layout): RPN objectness has 2A channels (2-way softmax, background block first); class 0 / attribute
  0 are background; 1601 class-specific deltas; ROI box weights (1, 1, 1, 1); the "+1" width convention
  with clipping to w-1. Anchors: what bottom-up-attention.pytorch runs, read at its pinned detectron2
  (v0.2.1, be792b9): ``DefaultAnchorGenerator`` with its config's ``SIZES [[4, 8, 16, 32]]`` as pixel
  sizes, ratios (0.5, 1, 2), offset 0, size-major (see features_spec.md, "Detector checkpoints").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, box_iou, nms

from butd.registry import Entry, Registry

NUM_CLASSES = 1600  # foreground object classes
NUM_ATTRS = 400  # foreground attributes
SCALE_CLAMP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class Layout:
    name: str
    rpn_softmax: bool  # 2A objectness channels with softmax instead of A with sigmoid
    bg_first: bool  # background class / attribute at index 0 (Caffe) instead of last (detectron2)
    bbox_classes: int  # number of class-specific delta groups
    roi_box_weights: tuple[float, float, float, float]
    pixel_offset: float  # 1.0: Caffe "+1" widths and clip to size-1; 0.0: detectron2
    anchor_sizes: tuple[float, ...]  # detectron2 ANCHOR_GENERATOR.SIZES (pixels, sqrt of the area)


# name -> Entry(None, Layout); butd.registry style (``LAYOUTS[name]`` is the Layout)
LAYOUTS = Registry("checkpoint layout", {
    # py-bottom-up-attention configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml SIZES
    "d2": Entry(None, Layout("d2", False, False, NUM_CLASSES, (10.0, 10.0, 5.0, 5.0), 0.0, (64, 128, 256, 512)),
                "detectron2 checkpoints (py-bottom-up-attention): sigmoid RPN, background last"),
    # bottom-up-attention.pytorch configs/caffe/*.yaml (and configs/bua-caffe/*.yaml) SIZES
    "caffe": Entry(None, Layout("caffe", True, True, NUM_CLASSES + 1, (1.0, 1.0, 1.0, 1.0), 1.0, (4, 8, 16, 32)),
                   "Caffe-converted checkpoints (bottom-up-attention.pytorch): softmax RPN, background first"),
})

RPN_DEFAULTS = {
    "aspect_ratios": (0.5, 1.0, 2.0),
    "stride": 16,
    "pre_nms_topk": 6000,
    "post_nms_topk": 300,
    "nms_thresh": 0.7,
    "min_size": 16,  # Caffe TEST.RPN_MIN_SIZE (applied in the "caffe" layout, scaled by im_scale)
}


def d2_cell_anchors(sizes, ratios) -> torch.Tensor:
    """Anchors centred at 0, size-major then ratio (detectron2 DefaultAnchorGenerator order)."""
    out = []
    for size in sizes:
        area = float(size) ** 2
        for r in ratios:
            w = math.sqrt(area / r)
            h = r * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def caffe_cell_anchors(stride: int, ratios, scales) -> torch.Tensor:
    """py-faster-rcnn generate_anchors: ratio-major then scale, integer-rounded, "+1" widths. (The Caffe
    original's anchors; bottom-up-attention.pytorch does not use them, see the module docstring.)"""
    base = stride
    ctr = 0.5 * (base - 1)
    out = []
    for r in ratios:
        ws = torch.round(torch.sqrt(torch.tensor(base * base / r, dtype=torch.float64)))
        hs = torch.round(ws * r)
        for s in scales:
            w, h = float(ws * s), float(hs * s)
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """(h*w*A, 4) anchors, row-major over (y, x, anchor)."""
    dev = cell.device
    sy = torch.arange(h, device=dev, dtype=torch.float32) * stride
    sx = torch.arange(w, device=dev, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.view(1, -1, 4)).reshape(-1, 4)


def apply_deltas(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0), offset: float = 0.0):
    """Box2BoxTransform.apply_deltas; deltas (N, K*4), boxes (N, 4) -> (N, K*4)."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + offset
    heights = boxes[:, 3] - boxes[:, 1] + offset
    cx = boxes[:, 0] + 0.5 * widths
    cy = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    pcx = dx * widths[:, None] + cx[:, None]
    pcy = dy * heights[:, None] + cy[:, None]
    pw = torch.exp(dw) * widths[:, None]
    ph = torch.exp(dh) * heights[:, None]
    out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, h: float, w: float, offset: float = 0.0) -> torch.Tensor:
    x = boxes[..., 0::2].clamp(min=0, max=w - offset)
    y = boxes[..., 1::2].clamp(min=0, max=h - offset)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nms_offset(boxes, scores, thresh, offset: float = 0.0, idxs=None):
    """NMS; ``offset=1`` gives the Caffe IoU with (x2-x1+1)(y2-y1+1) areas (exactly, via a shift)."""
    if offset:
        boxes = boxes.clone()
        boxes[:, 2:] += offset
    if idxs is None:
        return nms(boxes, scores, thresh)
    return batched_nms(boxes, scores, idxs, thresh)


class RPNHead(nn.Module):
    def __init__(self, cin: int = 1024, hidden: int = 512, num_anchors: int = 12, softmax: bool = False):
        super().__init__()
        self.softmax = softmax
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, num_anchors * (2 if softmax else 1), 1)
        self.anchor_deltas = nn.Conv2d(hidden, num_anchors * 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (N, H*W*A) objectness scores (monotone in P(object)) and (N, H*W*A, 4) deltas."""
        t = F.relu(self.conv(x))
        logits = self.objectness_logits(t)
        n, _, h, w = logits.shape
        if self.softmax:  # Caffe rpn_cls_score: [bg x A, fg x A] along channels
            logits = F.softmax(logits.view(n, 2, -1, h, w), dim=1)[:, 1]
        scores = logits.permute(0, 2, 3, 1).reshape(n, -1)
        d = self.anchor_deltas(t)
        deltas = d.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        return scores, deltas


class RPN(nn.Module):
    """Proposal generator; ``rpn_head`` carries the weights (``proposal_generator.rpn_head.*``)."""

    def __init__(self, layout: Layout, cfg: dict | None = None):
        super().__init__()
        self.layout = layout
        self.cfg = dict(RPN_DEFAULTS, anchor_sizes=layout.anchor_sizes, **(cfg or {}))
        cell = d2_cell_anchors(self.cfg["anchor_sizes"], self.cfg["aspect_ratios"])  # both layouts: detectron2's
        self.register_buffer("cell_anchors", cell, persistent=False)
        self.rpn_head = RPNHead(1024, 512, cell.shape[0], softmax=layout.rpn_softmax)

    def forward(self, feats: torch.Tensor, sizes: list[tuple[int, int]], scales: list[float]):
        """feats (N, 1024, H, W); sizes [(h, w)] of the resized images -> list of (R, 4) proposals."""
        scores, deltas = self.rpn_head(feats)
        anchors = grid_anchors(self.cell_anchors, feats.shape[2], feats.shape[3], self.cfg["stride"])
        off = self.layout.pixel_offset
        out = []
        for i, (h, w) in enumerate(sizes):
            s = scores[i].float()
            k = min(self.cfg["pre_nms_topk"], s.numel())
            if off:  # bottom-up-attention.pytorch find_top_bua_rpn_proposals: decode all, clip, drop
                # inverted boxes, drop boxes whose +1 side is not > min_size * scale, then top-k
                boxes = clip_boxes(apply_deltas(deltas[i].float(), anchors, offset=off), h, w, off)
                ws, hs = boxes[:, 2] - boxes[:, 0] + off, boxes[:, 3] - boxes[:, 1] + off
                keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                keep &= (ws > self.cfg["min_size"] * scales[i]) & (hs > self.cfg["min_size"] * scales[i])
                boxes, s = boxes[keep], s[keep]
                s, order = s.sort(descending=True)
                s, boxes = s[:k], boxes[order[:k]]
            else:  # detectron2: top-k on logits, decode, clip, drop empty boxes
                s, order = s.sort(descending=True)
                s, order = s[:k], order[:k]
                boxes = apply_deltas(deltas[i, order].float(), anchors[order])
                boxes = clip_boxes(boxes, h, w)
                keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                boxes, s = boxes[keep], s[keep]
            keep = nms_offset(boxes, s, self.cfg["nms_thresh"], off)[: self.cfg["post_nms_topk"]]
            out.append(boxes[keep])
        return out


class BoxPredictor(nn.Module):
    """cls_score (1601), class-specific bbox_pred, and the attribute head of the VG model:
    cls_embedding(argmax class, 256) ++ pooled (2048) -> fc_attr 512 -> ReLU -> attr_score 401."""

    def __init__(self, layout: Layout, dim: int = 2048):
        super().__init__()
        self.layout = layout
        self.cls_score = nn.Linear(dim, NUM_CLASSES + 1)
        self.bbox_pred = nn.Linear(dim, layout.bbox_classes * 4)
        self.cls_embedding = nn.Embedding(NUM_CLASSES + 1, dim // 8)
        self.fc_attr = nn.Linear(dim + dim // 8, dim // 4)
        self.attr_score = nn.Linear(dim // 4, NUM_ATTRS + 1)

    def forward(self, x: torch.Tensor):
        logits = self.cls_score(x)
        deltas = self.bbox_pred(x)
        emb = self.cls_embedding(logits.argmax(dim=1))
        attr = self.attr_score(F.relu(self.fc_attr(torch.cat([x, emb.to(x.dtype)], dim=1))))
        return logits, deltas, attr

    def probabilities(self, logits, attr_logits):
        """(R, 1600) foreground class probs and (R, 400) foreground attribute probs."""
        probs = F.softmax(logits.float(), dim=1)
        if self.layout.bg_first:  # Caffe: softmax over 401, drop "no attribute"
            return probs[:, 1:], F.softmax(attr_logits.float(), dim=1)[:, 1:]
        # py-bottom-up-attention: softmax over the 400 non-background attributes
        return probs[:, :-1], F.softmax(attr_logits.float()[:, :-1], dim=1)

    def class_deltas(self, deltas: torch.Tensor) -> torch.Tensor:
        """(R, 1600*4) deltas of the foreground classes, in foreground-class order."""
        return deltas[:, 4:] if self.layout.bbox_classes == NUM_CLASSES + 1 else deltas


def per_class_max_conf(boxes: torch.Tensor, fg_probs: torch.Tensor, thresh: float, offset: float = 0.0,
                       vectorized: bool | None = None):
    """generate_tsv.py: for each class run NMS over all boxes with that class's scores; a box's
    confidence is the largest score it keeps in any class (0 if suppressed everywhere).

    Equal scores are visited in box order (lower index first; the proposals come in the RPN's
    objectness order), so ties resolve the same on every device (see ``nms_ties_by_index``).
    CPU: one torchvision NMS per class. CUDA (or ``vectorized=True``): the same greedy NMS for all
    classes at once, stepping through score ranks with a shared IoU matrix (R steps, not C NMS calls).
    """
    if vectorized is None:
        vectorized = boxes.device.type != "cpu"
    max_conf = torch.zeros(boxes.shape[0], dtype=fg_probs.dtype, device=boxes.device)
    if boxes.shape[0] == 0:
        return max_conf
    b = boxes.float().clone()
    b[:, 2:] += offset
    scores = fg_probs.t().contiguous()  # (C, R)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    if not vectorized:
        ranked = scores.gather(1, order)
        tied = (ranked[:, 1:] == ranked[:, :-1]).any(1).tolist()  # only these need the rank order
        rank = -torch.arange(b.shape[0], dtype=torch.float32, device=b.device)
        for c in range(scores.shape[0]):
            keep = order[c, nms(b[order[c]], rank, thresh)] if tied[c] else nms(b, scores[c], thresh)
            max_conf[keep] = torch.maximum(max_conf[keep], scores[c, keep])
        return max_conf
    over = box_iou(b, b) > thresh  # (R, R), shared by all classes
    suppressed = torch.zeros_like(scores, dtype=torch.bool)
    kept = torch.zeros_like(suppressed)
    rows = torch.arange(scores.shape[0], device=scores.device)
    for t in range(order.shape[1]):
        cand = order[:, t]  # (C,) box at rank t in each class
        alive = ~suppressed[rows, cand]
        kept[rows, cand] = alive
        suppressed |= over[cand] & alive[:, None]
    return torch.where(kept, scores, torch.zeros_like(scores)).amax(dim=0)


def nms_ties_by_index(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """torchvision NMS, except that equal scores are visited lower index first (torchvision's own
    sort leaves their order unspecified, and it differs between CPU and CUDA). Returns the kept
    indices in descending score order, as ``nms`` does."""
    order = torch.argsort(scores, descending=True, stable=True)
    if not bool((scores[order[1:]] == scores[order[:-1]]).any()):
        return nms(boxes.float(), scores.float(), thresh)  # no ties: the same visiting order
    rank = -torch.arange(len(order), dtype=torch.float32, device=scores.device)  # strictly decreasing
    return order[nms(boxes[order].float(), rank, thresh)]


def select_boxes(max_conf: torch.Tensor, conf_thresh: float, min_boxes: int, max_boxes: int):
    """Indices kept: confidence >= conf_thresh, clamped to [min_boxes, max_boxes] by confidence.

    When clamping, equal confidences are ranked lower index first (the proposals' RPN order). The
    originals sort with ``np.argsort(c)[::-1]`` / ``torch.argsort(c, descending=True)``, neither
    stable, so their order among ties is implementation-defined; butd fixes one."""
    keep = torch.nonzero(max_conf >= conf_thresh).flatten()
    order = torch.argsort(max_conf, descending=True, stable=True)
    if keep.numel() < min_boxes:
        return order[:min_boxes]
    if keep.numel() > max_boxes:
        return order[:max_boxes]
    return keep
