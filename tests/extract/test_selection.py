"""Box selection policies: the registry and the airsplay-36 rule on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from butd.extract.selection import POLICIES, AirsplaySelection, CaffeSelection, build_policy


def test_registry_names_and_settings():
    assert list(POLICIES) == ["airsplay-36", "caffe"]
    c = build_policy("caffe", min_boxes=36, max_boxes=36, conf_thresh=0.1, box_source="regressed")
    assert isinstance(c, CaffeSelection) and (c.min_boxes, c.max_boxes, c.conf_thresh) == (36, 36, 0.1)
    a = build_policy("airsplay-36")
    assert isinstance(a, AirsplaySelection) and a.boxes == 36 and a.box_source == "regressed"
    assert a.thresholds == tuple(np.arange(0.3, 1.0, 0.1).tolist())  # 0.6000000000000001 ... as the script
    with pytest.raises(ValueError, match="unknown boxes policy 'nms'"):
        build_policy("nms")
    assert build_policy("airsplay-36", box_source="proposals", min_boxes=10).box_source == "regressed"
    with pytest.raises(ValueError, match="min_boxes"):
        build_policy("caffe", min_boxes=20, max_boxes=10)


def _row_of_boxes(n: int, step: float) -> torch.Tensor:
    """n boxes of width 10 along x, each shifted by ``step`` from the last: neighbour IoU = (10-step)/(10+step)."""
    x = torch.arange(n, dtype=torch.float32) * step
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)


def _run(boxes: torch.Tensor, conf: torch.Tensor, cls: torch.Tensor):
    probs = torch.zeros(len(boxes), 1600)
    probs[torch.arange(len(boxes)), cls] = conf
    fixed = boxes.clone()

    def regressed(keep, c):  # the box of the proposal's top class, here independent of the class
        assert torch.equal(c, cls[keep])
        return fixed[keep] * 2  # "original pixels": a different frame than the NMS runs in

    return AirsplaySelection()(probs, boxes, regressed, (100, 100), 0.0, regressed_resized=lambda k, c: fixed[k])


def test_airsplay_raises_the_threshold_until_36_remain():
    # 80 boxes, neighbours at IoU 6/14 = 0.43: NMS 0.3 and 0.4 keep every other box (40 >= 36? yes at 0.3)
    boxes = _row_of_boxes(80, 4.0)
    conf = torch.linspace(0.9, 0.1, 80)
    sel = _run(boxes, conf, torch.arange(80) % 7)
    assert len(sel.keep) == 36 and torch.equal(sel.keep, torch.arange(0, 72, 2))  # threshold 0.3 sufficed
    # 60 boxes at IoU 0.43: 0.3 and 0.4 keep 30 (< 36); 0.5 keeps all 60 -> the first 36 by confidence
    sel = _run(_row_of_boxes(60, 4.0), torch.linspace(0.9, 0.1, 60), torch.zeros(60, dtype=torch.long))
    assert torch.equal(sel.keep, torch.arange(36))
    assert torch.equal(sel.boxes, _row_of_boxes(60, 4.0)[:36] * 2)
    torch.testing.assert_close(sel.obj_conf, torch.linspace(0.9, 0.1, 60)[:36])


def test_airsplay_nms_is_across_classes_and_keeps_what_0_9_leaves():
    # 50 identical boxes in 50 different classes: per-class NMS would keep all; the script keeps one
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(50, 1)
    sel = _run(boxes, torch.linspace(0.9, 0.5, 50), torch.arange(50))
    assert sel.keep.tolist() == [0] and sel.obj_id.tolist() == [0]


def test_caffe_policy_keeps_10_to_100_by_confidence():
    boxes = _row_of_boxes(150, 20.0)  # disjoint: per-class NMS suppresses nothing
    conf = torch.linspace(0.99, 0.01, 150)
    probs = torch.zeros(150, 1600)
    probs[:, 3] = conf
    sel = CaffeSelection()(probs, boxes, None, (100, 5000), 0.0)
    assert int((conf >= 0.2).sum()) == 121 and torch.equal(sel.keep, torch.arange(100))  # capped at 100
    probs[:, 3] = conf - 0.5  # 45 pass: exactly those
    sel = CaffeSelection()(probs, boxes, None, (100, 5000), 0.0)
    assert torch.equal(sel.keep, torch.nonzero(probs[:, 3] >= 0.2).flatten()) and len(sel.keep) == 45
    sel = CaffeSelection(min_boxes=36, max_boxes=36)(probs, boxes, None, (100, 5000), 0.0)
    assert torch.equal(sel.keep, torch.arange(36)) and (sel.obj_id == 3).all()


def test_ties_are_broken_by_proposal_order_everywhere():
    """Equal confidences (proposals pooling the same cells get identical features) resolve lower
    index first: at the 100-box cut, in the per-class NMS on CPU and CUDA paths, and in airsplay-36."""
    from butd.extract.bua_heads import nms_ties_by_index, per_class_max_conf

    # 150 disjoint boxes, all of confidence 0.5: the cut keeps the first 100 proposals, in order
    boxes = _row_of_boxes(150, 20.0)
    probs = torch.zeros(150, 1600)
    probs[:, 7] = 0.5
    assert torch.equal(CaffeSelection()(probs, boxes, None, (100, 5000), 0.0).keep, torch.arange(100))
    # the same tie under any permutation of equal scores: the kept set is the lowest indices
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    probs2 = probs.clone()
    probs2[perm[:20], 7] = 0.9  # 20 higher first, then the tied 0.5s by index
    rest = [i for i in range(150) if i not in set(perm[:20].tolist())]
    want = torch.cat([perm[:20].sort().values, torch.tensor(rest[:80])])
    assert torch.equal(CaffeSelection()(probs2, boxes, None, (100, 5000), 0.0).keep, want)
    # overlapping boxes with many equal scores: NMS visits ties lower index first, whatever
    # torchvision's (unstable) sort does; per-class NMS agrees on the CPU and CUDA paths
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 80
    rand_boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=g) * 30], 1)
    tied = torch.randint(1, 4, (300,), generator=g).float() / 4  # three values only
    assert not torch.equal(torch.sort(tied, descending=True).indices, torch.argsort(tied, descending=True, stable=True))
    assert nms_ties_by_index(rand_boxes, tied, 0.3).tolist() == _greedy(rand_boxes, tied, 0.3)
    p = torch.stack([tied, tied.flip(0), torch.full((300,), 0.25)], 1)
    for offset in (0.0, 1.0):
        a = per_class_max_conf(rand_boxes, p, 0.3, offset, vectorized=False)
        assert torch.equal(a, per_class_max_conf(rand_boxes, p, 0.3, offset, vectorized=True))
    # airsplay-36: 80 identical-score boxes in a row at IoU 0.43 -> every other box, from index 0
    sel = _run(_row_of_boxes(80, 4.0), torch.full((80,), 0.6), torch.zeros(80, dtype=torch.long))
    assert torch.equal(sel.keep, torch.arange(0, 72, 2))


def _greedy(boxes, scores, t):
    """Plain greedy NMS over (-score, index) order."""
    from torchvision.ops import box_iou

    iou = box_iou(boxes, boxes)
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i)):
        if all(float(iou[i, j]) <= t for j in keep):
            keep.append(i)
    return keep
