"""Box selection policies of the bua-r101 detector: name -> (frozen config, selection rule).

Each policy reproduces one original's published extraction script (facts read in those repositories):

* ``caffe`` — bottom-up-attention ``tools/generate_tsv.py`` (and bottom-up-attention.pytorch's
  extractor, same rule): for each of the 1600 classes, NMS at 0.3 over all proposals with that class's
  scores; a proposal's confidence is the largest score it keeps in any class; keep proposals with
  confidence >= 0.2, at least ``min_boxes`` (10) and at most ``max_boxes`` (100) by confidence
  (``min_boxes = max_boxes = 36`` gives the fixed-36 archives). The stored boxes are the proposals the
  features were pooled from (``box_source="regressed"`` stores the class-regressed box of each kept
  proposal's top class instead).
* ``airsplay-36`` — py-bottom-up-attention ``demo/detectron2_mscoco_proposal_maxnms.py`` (the LXMERT
  features): every proposal gets its top foreground class, and the class-regressed box of that class
  (clipped to the resized image); NMS over those boxes *across classes* with thresholds 0.3, 0.4, ...,
  0.9 in turn (``np.arange(0.3, 1.0, 0.1)``), keeping the first 36 survivors of the first threshold
  that leaves at least 36 (else the result at 0.9, which may hold fewer). No confidence threshold is
  applied (the script passes ``score_thresh=0.2`` to a function that never reads it). Features are
  the pooled proposal features of the kept proposals; boxes are the regressed boxes mapped back to the
  original image (per-axis scale, clipped). The script writes zero attributes because its model has no
  attribute head; with the attribute checkpoint butd stores the attribute head's argmax as usual.

Ties in confidence resolve lower proposal index first, in both policies (features_spec.md 10.4): the
originals' sorts are not stable, so their order among equal scores is implementation-defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from butd.registry import Entry, Registry

if TYPE_CHECKING:  # torch is imported by the rules only: the CLI lists POLICIES without it
    import torch

__all__ = ["POLICIES", "AirsplaySelection", "CaffeSelection", "Selected", "build_policy"]


@dataclass(frozen=True)
class Selected:
    keep: torch.Tensor  # (k,) proposal indices, in stored order
    boxes: torch.Tensor  # (k, 4) in original-image pixels
    obj_id: torch.Tensor  # (k,) foreground class ids
    obj_conf: torch.Tensor  # (k,)


@dataclass(frozen=True)
class CaffeSelection:
    name: str = "caffe"
    class_nms: float = 0.3
    conf_thresh: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100
    box_source: str = "proposals"

    def __post_init__(self):
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError("need 1 <= min_boxes <= max_boxes")
        if self.box_source not in ("proposals", "regressed"):
            raise ValueError(f"box_source must be 'proposals' or 'regressed', got {self.box_source!r}")

    def __call__(self, probs: torch.Tensor, props_orig: torch.Tensor, regressed: Callable, orig_hw,
                 offset: float) -> Selected:
        """probs (R, 1600) foreground; props_orig (R, 4) proposals in original pixels; ``regressed(idx,
        cls)`` -> (k, 4) class-regressed boxes in original pixels, clipped."""
        from butd.extract.bua_heads import clip_boxes, per_class_max_conf, select_boxes

        max_conf = per_class_max_conf(props_orig, probs, self.class_nms, offset)
        keep = select_boxes(max_conf, self.conf_thresh, self.min_boxes, self.max_boxes)
        obj_conf, obj_id = probs[keep].max(dim=1)
        if self.box_source == "regressed":
            boxes = regressed(keep, obj_id)
        else:  # as stored by the originals (rois / scale); inside [0, W] x [0, H] already, the clip is a guard
            boxes = clip_boxes(props_orig[keep], orig_hw[0], orig_hw[1])
        return Selected(keep, boxes, obj_id, obj_conf)


@dataclass(frozen=True)
class AirsplaySelection:
    name: str = "airsplay-36"
    boxes: int = 36
    thresholds: tuple[float, ...] = tuple(float(v) for v in np.arange(0.3, 1.0, 0.1))  # as the script
    box_source: str = "regressed"

    def __call__(self, probs: torch.Tensor, props_orig: torch.Tensor, regressed: Callable, orig_hw,
                 offset: float, regressed_resized: Callable | None = None) -> Selected:
        """``regressed_resized(idx, cls)``: the same boxes in resized pixels, clipped there (the NMS
        runs on those, as in the script)."""
        import torch

        from butd.extract.bua_heads import nms_ties_by_index

        max_conf, max_cls = probs.max(dim=1)
        idx = torch.arange(len(probs), device=probs.device)
        in_resized = (regressed_resized or regressed)(idx, max_cls)
        keep = idx[:0]
        for t in self.thresholds:
            keep = nms_ties_by_index(in_resized, max_conf, t)[: self.boxes]
            if len(keep) >= self.boxes:
                break
        return Selected(keep, regressed(keep, max_cls[keep]), max_cls[keep], max_conf[keep])


# name -> Entry(None, selection class); butd.registry style
POLICIES = Registry("boxes policy", {
    "caffe": Entry(None, CaffeSelection, "generate_tsv.py: per-class NMS 0.3, confidence >= 0.2, 10-100 boxes"),
    "airsplay-36": Entry(None, AirsplaySelection, "py-bottom-up-attention's 36-box script (cross-class NMS)"),
})


def build_policy(name: str, *, min_boxes: int = 10, max_boxes: int = 100, conf_thresh: float = 0.2,
                 box_source: str | None = None):
    """The named policy; ``min_boxes`` / ``max_boxes`` / ``conf_thresh`` / ``box_source`` configure
    ``caffe`` (``airsplay-36`` has fixed values and always stores regressed boxes, whatever they say)."""
    POLICIES.entry(name)  # an unknown name stops with one line
    if name == "caffe":
        return CaffeSelection(min_boxes=int(min_boxes), max_boxes=int(max_boxes), conf_thresh=float(conf_thresh),
                              box_source=box_source or "proposals")
    return AirsplaySelection()  # box_source is a setting of "caffe" (the CLI refuses an explicit mismatch)
