"""The bottom-up-attention Visual Genome detector (Faster R-CNN R101-C4 + attributes), torch only.

``BUTDDetector`` is the graph (state_dict keys = detectron2 checkpoint keys); ``BUTDExtractor`` is
the adapter the extraction runner uses (registered as "bua-r101").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_pool

from butd.extract.bua_heads import (
    LAYOUTS,
    RPN,
    BoxPredictor,
    apply_deltas,
    clip_boxes,
)
from butd.extract.preprocess import (
    PIXEL_MEANS_BGR,
    TEST_MAX_SIZE,
    TEST_SCALE,
    CaffePreprocessor,
    build_preprocessor,
)
from butd.extract.resnet_c4 import ResNetC4, make_res5
from butd.extract.selection import POLICIES, build_policy
from butd.extract.weights import check_state, convert_checkpoint, read_detector_weights

Preprocessor = CaffePreprocessor  # the default of older call sites; extractors pick by layout

POOLER_RESOLUTION = 14  # roi_pool5 pooled_w/h, spatial_scale 1/16
FEATURE_STRIDE = 16
RANDOM_WARNING = "random weights: features are meaningless, for tests only"


class ROIHeads(nn.Module):
    """RoI pooling at stride 16 (14x14) -> res5 -> mean pool -> box / attribute predictor."""

    def __init__(self, layout, memory_format: torch.memory_format = torch.channels_last):
        super().__init__()
        self.res5 = make_res5()
        self.box_predictor = BoxPredictor(layout)
        self.memory_format = memory_format

    def pooled_features(self, feats: torch.Tensor, boxes: list[torch.Tensor], chunk: int = 512) -> torch.Tensor:
        """boxes[i]: (k_i, 4) in resized pixels for image i of ``feats`` -> (sum k_i, 2048); RoIs go
        through res5 ``chunk`` at a time to bound memory."""
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        rois = rois.float()  # fp32 coordinates even under fp16 autocast (half would round boxes)
        if rois.shape[0] == 0:
            return feats.new_zeros((0, 2048))
        feats = feats.float()
        out = [self.res5(roi_pool(feats, r, POOLER_RESOLUTION, 1.0 / FEATURE_STRIDE)
                         .contiguous(memory_format=self.memory_format)).mean(dim=(2, 3))
               for r in rois.split(chunk)]
        return torch.cat(out)


class BUTDDetector(nn.Module):
    """Faster R-CNN ResNet-101 C4 with the Visual Genome class and attribute heads. ``channels_last``:
    NHWC activations in the backbone and res5, convolved by oneDNN / cuDNN without NCHW's reorders (equal
    within rounding, ~1e-6 relative; BENCHMARKS.md has the speed); ``False``: NCHW, as detectron2."""

    def __init__(self, layout: str = "d2", rpn: dict | None = None, channels_last: bool = True):
        super().__init__()
        self.layout = LAYOUTS[layout]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone = ResNetC4()
        self.proposal_generator = RPN(self.layout, rpn)
        self.roi_heads = ROIHeads(self.layout, self.memory_format)
        self.eval()

    # -- graph pieces -------------------------------------------------------------------------
    def backbone_groups(self, images: list[torch.Tensor], batched: bool = True):
        """Run the backbone once per group of same-size images (one group per image when
        ``batched`` is False); returns [(image indices, (n, 1024, h/16, w/16) features)]."""
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape) if batched else (i,), []).append(i)
        fmt = self.memory_format
        return [(idx, self.backbone(torch.stack([images[i] for i in idx]).contiguous(memory_format=fmt)))
                for idx in groups.values()]

    def heads(self, feats: torch.Tensor, boxes: list[torch.Tensor]):
        """RoI pool (boxes in resized pixels, one tensor per image of ``feats``) -> res5 -> predictor."""
        pooled = self.roi_heads.pooled_features(feats, boxes)
        logits, deltas, attr = self.roi_heads.box_predictor(pooled)
        return pooled, logits, deltas, attr

    # -- inference ------------------------------------------------------------------------------
    def run(self, images: list[torch.Tensor], scales: list, orig_hw: list[tuple[int, int]],
            given: list[torch.Tensor | None] | None = None, *, policy=None, batched: bool = True):
        """images: mean-subtracted BGR [3, h, w] on the model's device; ``scales[i]``: resize factor of
        image i (a float, or per-axis ``(sx, sy)``); ``given[i]``: boxes in original pixels for image i
        (features for exactly those), else detect and select with ``policy`` (default: ``caffe``)."""
        policy = policy or build_policy("caffe")
        given = list(given) if given is not None else [None] * len(images)
        out: list[dict | None] = [None] * len(images)
        for idx, feats in self.backbone_groups(images, batched):
            sizes = [tuple(images[i].shape[-2:]) for i in idx]
            sxy = [box_scale(scales[i], feats.device) for i in idx]
            todo = [j for j, i in enumerate(idx) if given[i] is None]
            props: list[torch.Tensor | None] = [None] * len(idx)
            if todo:  # the RPN's min size (caffe layout) scales with the (isotropic) caffe scale
                found = self.proposal_generator(feats[todo].float(), [sizes[j] for j in todo],
                                                [float(sxy[j][1]) for j in todo])
                for j, p in zip(todo, found):
                    props[j] = p
            for j, i in enumerate(idx):
                if given[i] is not None:
                    g = torch.as_tensor(given[i], dtype=torch.float32, device=feats.device).reshape(-1, 4)
                    given[i], props[j] = g, g * sxy[j]
            pooled, logits, deltas, attr = self.heads(feats, props)
            counts = [len(p) for p in props]
            parts = zip(pooled.split(counts), logits.split(counts), deltas.split(counts), attr.split(counts))
            for j, (i, (pl, lg, dl, at)) in enumerate(zip(idx, parts)):
                if given[i] is not None:
                    out[i] = self._given(given[i], pl, lg, at, orig_hw[i])
                else:
                    out[i] = self._select(pl, lg, dl, at, props[j], sxy[j], orig_hw[i], sizes[j], policy)
        return out

    def forward_boxes(self, image: torch.Tensor, boxes, scale=1.0,
                      orig_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Features for boxes given in original-image pixels (one per box); ``image`` preprocessed."""
        if orig_hw is None:
            s = box_scale(scale, "cpu")
            orig_hw = (int(round(image.shape[-2] / float(s[1]))), int(round(image.shape[-1] / float(s[0]))))
        return self.run([image], [scale], [orig_hw], [boxes])[0]

    def _given(self, boxes, pooled, logits, attr, orig_hw):
        probs, attr_probs = self.roi_heads.box_predictor.probabilities(logits, attr)
        obj_conf, obj_id = probs.max(dim=1)
        attr_conf, attr_id = attr_probs.max(dim=1)
        return _record(boxes, pooled, orig_hw, obj_id, obj_conf, attr_id, attr_conf)

    def _select(self, pooled, logits, deltas, attr, props, sxy, orig_hw, img_hw, policy):
        """One image's proposals -> the record ``policy`` selects (see butd.extract.selection)."""
        bp = self.roi_heads.box_predictor
        probs, attr_probs = bp.probabilities(logits, attr)
        off = self.layout.pixel_offset
        wts = self.layout.roi_box_weights
        props = props.float()
        boxes_orig = props / sxy

        def class_deltas(keep, cls):
            d = bp.class_deltas(deltas[keep].float()).view(len(keep), -1, 4)
            return d[torch.arange(len(keep), device=d.device), cls]

        def regressed_resized(keep, cls):
            return clip_boxes(apply_deltas(class_deltas(keep, cls), props[keep], wts, off), *img_hw, off)

        def regressed(keep, cls):
            if off:  # Caffe im_detect decodes in original pixels
                return clip_boxes(apply_deltas(class_deltas(keep, cls), boxes_orig[keep], wts, off), *orig_hw, off)
            # detectron2 decodes in the resized image, then detector_postprocess rescales and clips
            return clip_boxes(regressed_resized(keep, cls) / sxy, *orig_hw)

        kw = {"regressed_resized": regressed_resized} if policy.name != "caffe" else {}
        sel = policy(probs, boxes_orig, regressed, orig_hw, off, **kw)
        attr_conf, attr_id = attr_probs[sel.keep].max(dim=1)
        return _record(sel.boxes, pooled[sel.keep], orig_hw, sel.obj_id, sel.obj_conf, attr_id, attr_conf)


def box_scale(scale, device) -> torch.Tensor:
    """(4,) multipliers original -> resized pixels for x1 y1 x2 y2, from a float or ``(sx, sy)``."""
    if isinstance(scale, (list, tuple, np.ndarray)):
        sx, sy = (float(v) for v in scale)
    else:
        sx = sy = float(scale)
    return torch.tensor([sx, sy, sx, sy], dtype=torch.float32, device=device)


def _record(boxes, feats, orig_hw, obj_id, obj_conf, attr_id, attr_conf) -> dict[str, np.ndarray]:
    def f32(t):
        return t.detach().float().cpu().numpy().astype(np.float32)

    def i64(t):
        return t.detach().cpu().numpy().astype(np.int64)

    k = int(boxes.shape[0])
    return {
        "boxes": f32(boxes).reshape(k, 4),
        "features": f32(feats).reshape(k, feats.shape[-1]),
        "num_boxes": np.asarray(k, dtype=np.int32).reshape(()),
        "image_w": np.asarray(orig_hw[1], dtype=np.int32).reshape(()),
        "image_h": np.asarray(orig_hw[0], dtype=np.int32).reshape(()),
        "objects_id": i64(obj_id),
        "objects_conf": f32(obj_conf),
        "attrs_id": i64(attr_id),
        "attrs_conf": f32(attr_conf),
    }


def random_detector(layout: str = "d2", seed: int = 0, rpn: dict | None = None) -> BUTDDetector:
    """A detector with deterministic random weights and BN statistics (for tests / benchmarks)."""
    gen = torch.Generator().manual_seed(seed)
    model = BUTDDetector(layout, rpn)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("norm.running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.75)
            elif name.endswith(("norm.running_mean", "norm.bias")) or name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.02)
            elif name.endswith("norm.weight"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.4 + 0.6)
            elif name.startswith(("proposal_generator.rpn_head.objectness", "proposal_generator.rpn_head.anchor",
                                  "roi_heads.box_predictor.bbox_pred")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.01)  # small deltas: sensible boxes
            else:  # conv / linear / embedding weights: fan-in scaled
                fan_in = int(np.prod(t.shape[1:])) if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
    return model


class BUTDExtractor:
    """Runner adapter: preprocess on CPU workers, ``extract`` batches on the model device.

    Preprocessing follows the checkpoint's layout (``caffe``: cv2-style resize by the scale; ``d2``:
    detectron2's size rule and Pillow bilinear), see butd.extract.preprocess; box selection follows
    the named ``boxes_policy`` (see butd.extract.selection). Both are recorded in ``config_dict``.
    """

    name = "bua-r101"
    kind = "region"

    def __init__(self, weights: str | Path | None = None, *, device: str | torch.device = "cpu",
                 min_boxes: int = 10, max_boxes: int = 100, conf_thresh: float = 0.2,
                 box_source: str | None = None, boxes_policy: str = "caffe", fp16: bool = False, seed: int = 0,
                 rpn: dict | None = None, test_scale: int = TEST_SCALE, test_max_size: int = TEST_MAX_SIZE,
                 layout: str = "d2"):
        """``rpn`` / ``test_scale`` / ``test_max_size`` override the published test settings
        (tests and benchmarks only); ``seed`` / ``layout`` shape random weights. ``fp16`` runs the
        convolutions under CUDA float16 autocast (ignored on CPU); outputs are float32 either way."""
        self.policy = build_policy(boxes_policy, min_boxes=min_boxes, max_boxes=max_boxes,
                                   conf_thresh=conf_thresh, box_source=box_source)
        if weights is None or str(weights) == "random":
            warnings.warn(RANDOM_WARNING, UserWarning, stacklevel=2)
            self.model, self.weights_sha256, self.weights_path = random_detector(layout, seed, rpn), None, None
        else:
            self.model, self.weights_sha256 = load_detector(weights, rpn)
            self.weights_path = str(weights)
        self.fp16 = bool(fp16)
        self._pre = build_preprocessor(self.model.layout.name, int(test_scale), int(test_max_size))
        self.device = torch.device("cpu")
        self.to(device)

    def config_dict(self) -> dict[str, Any]:
        import dataclasses

        rpn = self.model.proposal_generator.cfg
        pol = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.policy).items()}
        return {
            "name": self.name, "layout": self.model.layout.name, "weights": self.weights_path,
            "min_boxes": pol.get("min_boxes", pol.get("boxes")), "max_boxes": pol.get("max_boxes", pol.get("boxes")),
            "conf_thresh": pol.get("conf_thresh"),
            "box_source": self.policy.box_source, "boxes_policy": pol, "fp16": self.fp16,
            "preprocess": self._pre.name, "pixel_means_bgr": list(PIXEL_MEANS_BGR),
            "test_scale": self._pre.scale, "test_max_size": self._pre.max_size,
            "pooler_resolution": POOLER_RESOLUTION,
            "rpn": {k: (list(v) if isinstance(v, tuple) else v) for k, v in rpn.items()},
        }

    def preprocessor(self):
        return self._pre

    def preprocess(self, image_rgb_uint8: np.ndarray) -> dict[str, Any]:
        return self._pre(image_rgb_uint8)

    def to(self, device: str | torch.device) -> BUTDExtractor:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _autocast(self):
        use = self.fp16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=use)

    def extract(self, batch: list[dict], boxes: list[np.ndarray | None] | None = None,
                *, batched: bool = True) -> list[dict[str, np.ndarray]]:
        if boxes is not None and len(boxes) != len(batch):
            raise ValueError(f"got {len(boxes)} box arrays for {len(batch)} images")
        # arrays that crossed Ray are read-only: copy into a tensor we own (torch warns on read-only memory)
        images = [torch.from_numpy(np.array(b["image"], dtype=np.float32)).to(self.device) for b in batch]
        scales = [b["scale"] for b in batch]
        hws = [tuple(int(v) for v in b["orig_hw"]) for b in batch]
        given = None
        if boxes is not None:
            given = [None if bx is None else torch.as_tensor(np.asarray(bx, dtype=np.float32)) for bx in boxes]
        with torch.inference_mode(), self._autocast():
            return self.model.run(images, scales, hws, given, policy=self.policy, batched=batched)


def load_detector(path: str | Path, rpn: dict | None = None) -> tuple[BUTDDetector, str]:
    """(BUTDDetector with the safetensors weights loaded strictly, sha256 of the file)."""
    state, layout, sha = read_detector_weights(path)
    model = BUTDDetector(layout, rpn)
    check_state(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval(), sha


def convert_weights(src: str | Path, dest: str | Path) -> dict[str, Any]:
    """Convert a published checkpoint (.pkl / .pth) to safetensors checked against this detector."""
    return convert_checkpoint(src, dest, BUTDDetector)


@dataclass(frozen=True)
class DetectorConfig:
    """The bua-r101 extractor; defaults are the published test settings (generate_tsv.py)."""

    name: str = "bua-r101"
    mode: str = "detect"  # "detect" (its own regions) | "boxes" (features of given boxes)
    weights: str | None = None  # a converted .safetensors file; None or "random" = random weights (tests)
    device: str = "auto"
    fp16: bool = False
    min_boxes: int = 10
    max_boxes: int = 100  # 36 with min_boxes 36 = the fixed-36 variant
    conf_thresh: float = 0.2
    box_source: str = "proposals"  # store the pooled proposals (as the original) or the class-regressed boxes
    # box selection of which original (butd.extract.selection): "caffe" (generate_tsv.py) or "airsplay-36"
    # (py-bottom-up-attention's 36-box script, which always stores regressed boxes; box_source is for "caffe")
    boxes_policy: str = "caffe"

    def __post_init__(self) -> None:
        if self.mode not in ("detect", "boxes"):
            raise ValueError(f"{self.name} is a detector: mode must be 'detect' or 'boxes', got {self.mode!r}")
        POLICIES.entry(self.boxes_policy)  # an unknown policy stops with one line


def build(cfg: DetectorConfig) -> BUTDExtractor:
    """Registry builder: ``DetectorConfig`` -> ``BUTDExtractor``."""
    from butd.devices import resolve_device

    return BUTDExtractor(cfg.weights, device=resolve_device(cfg.device), min_boxes=cfg.min_boxes,
                         max_boxes=cfg.max_boxes, conf_thresh=cfg.conf_thresh, box_source=cfg.box_source,
                         boxes_policy=cfg.boxes_policy, fp16=cfg.fp16)
