"""bua-r101 against py-bottom-up-attention's detectron2 model on CPU: same weights, same photos, 300 proposals.

    make bench-parity                       # builds .venv-parity once (a pure-Python detectron2 0.6)
    PYTHONPATH=src .venv-parity/bin/python bench/detector_vs_detectron2.py [--photos 5] [--rounds 2]

Both models get the same seeded random weights through the shared detectron2 key names (as
tests/extract/test_parity_detectron2.py builds them; speed only, the features are meaningless).
Per photo, alternated in one process, each side does the whole work of one image:

* detectron2: py-bottom-up-attention's ``demo/detectron2_mscoco_proposal_maxnms.py`` pipeline on
  detectron2's own modules: ``ResizeShortestEdge(600, 1000)``, ``preprocess_image``, backbone, RPN
  (post-NMS top 300), ``_shared_roi_transform`` + mean, box predictor (+ the VG attribute head),
  ``predict_probs`` / ``predict_boxes``, max-class boxes clipped, NMS across classes at 0.3, 0.4, ...
  until 36 remain, ``detector_postprocess``;
* butd: ``BUTDExtractor.preprocess`` + ``extract`` with ``boxes_policy="airsplay-36"`` (the same rule),
  and with butd's default rule (``caffe``: per-class NMS over the 1600 classes, 10-100 boxes), which
  py-bottom-up-attention does not ship (``--no-caffe`` leaves it out).

Reported: images/s of each side (median over photos x rounds, the order of the sides rotating) and the
speed ratio detectron2 time / butd time (> 1: butd is faster), by wall clock and by this process's CPU
time (``time.process_time``, steadier than wall time on a shared machine); with ``--stages`` also each
stage timed on identical inputs (backbone, RPN, RoI pooling + res5, predictor + selection), the profile
behind the ratio; ``--profile`` adds torch.profiler's top operators of one image on each side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T
    from detectron2.modeling import build_model
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("detectron2 is not installed here: run `make bench-parity` (it builds .venv-parity), or "
             "PYTHONPATH=src .venv-parity/bin/python bench/detector_vs_detectron2.py")
from torchvision.ops import nms  # noqa: E402

from butd.demo import shipped_photos  # noqa: E402
from butd.extract.detector import BUTDExtractor, box_scale  # noqa: E402
from butd.extract.images import load_image  # noqa: E402

NUM_OBJECTS = 36  # detectron2_mscoco_proposal_maxnms.py


def d2_config():
    """py-bottom-up-attention configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml on
    Base-RCNN-C4 (the values tests/extract/test_parity_detectron2.py uses)."""
    cfg = get_cfg()
    m = cfg.MODEL
    m.META_ARCHITECTURE, m.DEVICE, m.MASK_ON = "GeneralizedRCNN", "cpu", False
    m.PIXEL_MEAN, m.PIXEL_STD = [102.9801, 115.9465, 122.7717], [1.0, 1.0, 1.0]
    m.BACKBONE.NAME = "build_resnet_backbone"
    m.RESNETS.DEPTH, m.RESNETS.OUT_FEATURES, m.RESNETS.NORM, m.RESNETS.STRIDE_IN_1X1 = 101, ["res4"], "FrozenBN", True
    m.ANCHOR_GENERATOR.SIZES, m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[64, 128, 256, 512]], [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES, m.RPN.PRE_NMS_TOPK_TEST, m.RPN.NMS_THRESH = ["res4"], 6000, 0.7
    m.RPN.POST_NMS_TOPK_TEST = 300
    m.ROI_HEADS.NAME, m.ROI_HEADS.IN_FEATURES, m.ROI_HEADS.NUM_CLASSES = "Res5ROIHeads", ["res4"], 1600
    m.ROI_BOX_HEAD.POOLER_TYPE, m.ROI_BOX_HEAD.POOLER_RESOLUTION = "ROIPool", 14
    m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    fork = hasattr(m, "CAFFE_MAXPOOL")
    if fork:  # py-bottom-up-attention's own detectron2
        m.CAFFE_MAXPOOL, m.PROPOSAL_GENERATOR.HID_CHANNELS = True, 512
        m.ROI_BOX_HEAD.RES5HALVE, m.ROI_BOX_HEAD.ATTR, m.ROI_BOX_HEAD.NUM_ATTRS = False, True, 400
    else:
        m.RPN.CONV_DIMS = [512]
    return cfg, fork


def d2_model(ours: torch.nn.Module):
    """detectron2's model with ``ours``' weights; on stock detectron2 the two VG changes (Caffe max-pool
    stem; res5 stride 1, dilation 2) are applied to the built modules, and the attribute head is attached."""
    cfg, fork = d2_config()
    model = build_model(cfg).eval()
    if not fork:
        stem = model.backbone.stem

        def caffe_stem(x):
            return F.max_pool2d(F.relu_(stem.conv1(x)), kernel_size=3, stride=2, padding=0, ceil_mode=True)

        stem.forward = caffe_stem
        res5 = model.roi_heads.res5
        res5[0].conv1.stride = res5[0].shortcut.stride = (1, 1)
        for block in res5:
            block.conv2.padding = block.conv2.dilation = (2, 2)
        bp, obp = model.roi_heads.box_predictor, ours.roi_heads.box_predictor
        bp.cls_embedding, bp.fc_attr, bp.attr_score = obp.cls_embedding, obp.fc_attr, obp.attr_score
    res = model.load_state_dict(ours.state_dict(), strict=False)
    assert not [k for k in res.missing_keys if not k.startswith("pixel_")], res.missing_keys
    return model, fork


class D2Side:
    """py-bottom-up-attention's maxnms extraction script, on detectron2's modules."""

    def __init__(self, model, fork: bool):
        self.model, self.fork = model, fork
        self.resize = T.ResizeShortestEdge([600, 600], 1000)

    def preprocess(self, rgb):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        im = self.resize.get_transform(bgr).apply_image(bgr)
        inputs = [{"image": torch.as_tensor(im.astype("float32").transpose(2, 0, 1)),
                   "height": rgb.shape[0], "width": rgb.shape[1]}]
        return self.model.preprocess_image(inputs)

    def backbone(self, images):
        return self.model.backbone(images.tensor)

    def rpn(self, images, feats):
        return self.model.proposal_generator(images, feats, None)[0]

    def pooled(self, feats, props):
        return self.model.roi_heads._shared_roi_transform([feats["res4"]], [props[0].proposal_boxes]).mean(dim=[2, 3])

    def select(self, images, props, pooled, hw):
        bp = self.model.roi_heads.box_predictor
        out = bp(pooled)
        if self.fork:
            logits, attr, deltas = out
        else:
            logits, deltas = out
            emb = bp.cls_embedding(logits.argmax(1))
            attr = bp.attr_score(F.relu(bp.fc_attr(torch.cat([pooled, emb], 1))))
        probs = bp.predict_probs((logits, deltas), props)[0]
        boxes = bp.predict_boxes((logits, deltas), props)[0]
        size = images.image_sizes[0]
        for t in np.arange(0.3, 1.0, 0.1):  # fast_rcnn_inference_single_image_maxnms at each threshold
            scores = probs[:, :-1]
            b = Boxes(boxes.reshape(-1, 4))
            b.clip(size)
            b = b.tensor.view(-1, scores.shape[1], 4)
            max_scores, max_classes = scores.max(1)
            max_boxes = b[torch.arange(len(b)), max_classes]
            keep = nms(max_boxes, max_scores, float(t))[:NUM_OBJECTS]
            if len(keep) == NUM_OBJECTS:
                break
        inst = Instances(size)
        inst.pred_boxes, inst.scores, inst.pred_classes = Boxes(max_boxes[keep]), max_scores[keep], max_classes[keep]
        inst = detector_postprocess(inst, *hw)
        attr_conf, attr_id = F.softmax(attr[keep][:, :-1], 1).max(1)
        return {"boxes": inst.pred_boxes.tensor.numpy(), "features": pooled[keep].numpy(),
                "objects_id": inst.pred_classes.numpy(), "attrs_id": attr_id.numpy()}

    @torch.no_grad()
    def __call__(self, rgb):
        images = self.preprocess(rgb)
        feats = self.backbone(images)
        props = self.rpn(images, feats)
        return self.select(images, props, self.pooled(feats, props), rgb.shape[:2])


def photos(n: int) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as d:
        paths = shipped_photos(Path(d))
        if not paths:
            sys.exit("no shipped photos found (install the [dev] extras: matplotlib, scikit-image, scikit-learn)")
        return [load_image(p).array for p in paths[:n]]


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def timed_cpu(fn, *args):
    """(wall s, this process's CPU s): CPU time is less sensitive to other jobs on a shared machine."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t, time.process_time() - c, out


def stage_times(ours: BUTDExtractor, theirs: D2Side, rgb) -> dict[str, tuple[float, float]]:
    """Each stage on identical inputs (detectron2's preprocessed image, features and proposals):
    {stage: (butd s, detectron2 s)}."""
    m = ours.model
    res = {}
    with torch.inference_mode():
        images = theirs.preprocess(rgb)
        x = images.tensor
        tb, _ = timed(m.backbone, x.contiguous(memory_format=m.memory_format))
        td, f_d2 = timed(theirs.backbone, images)
        res["backbone"] = (tb, td)
        tb, _ = timed(m.proposal_generator, f_d2["res4"], [tuple(x.shape[-2:])], [1.0])
        td, props = timed(theirs.rpn, images, f_d2)
        res["rpn"] = (tb, td)
        boxes = props[0].proposal_boxes.tensor
        tb, _ = timed(m.roi_heads.pooled_features, f_d2["res4"], [boxes])
        td, pooled = timed(theirs.pooled, f_d2, props)
        res["roi_pool_res5"] = (tb, td)
        (ih, iw), (h, w) = images.image_sizes[0], rgb.shape[:2]
        sxy = box_scale((iw / w, ih / h), "cpu")

        def butd_select():
            logits, deltas, attr = m.roi_heads.box_predictor(pooled)
            return m._select(pooled, logits, deltas, attr, boxes, sxy, (h, w), (ih, iw), ours.policy)

        tb, _ = timed(butd_select)
        td, _ = timed(theirs.select, images, props, pooled, (h, w))
        res["predictor_selection"] = (tb, td)
    return res


def profile_top(fn, n: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=5, help="how many of the 5 shipped photos")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the photos; medians are reported")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for both sides")
    ap.add_argument("--no-caffe", action="store_true", help="skip butd's default rule (caffe, 10-100 boxes)")
    ap.add_argument("--stages", action="store_true", help="also time each stage on identical inputs")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops, one photo")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = BUTDExtractor("random", boxes_policy="airsplay-36", seed=0)
        caffe = BUTDExtractor("random", seed=0)
    caffe.model = ours.model  # one model, two selection rules
    theirs = D2Side(*d2_model(ours.model))
    imgs = photos(args.photos)
    load0 = os.getloadavg()[0]
    print(f"bua-r101 vs detectron2 (fork={theirs.fork}), random weights (speed only), {len(imgs)} photos, "
          f"{args.rounds} rounds, 300 proposals, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {load0:.2f}", flush=True)

    def side(ex):
        return lambda rgb: ex.extract([ex.preprocess(rgb)])[0]

    sides = {"detectron2 (maxnms script)": theirs, "butd airsplay-36": side(ours)}
    if not args.no_caffe:
        sides["butd caffe 10-100 (default)"] = side(caffe)
    for fn in sides.values():  # warm-up (allocator, one-time inits)
        fn(imgs[0])
    times: dict[str, list] = {k: [] for k in sides}
    stages: dict[str, list] = {}
    names = list(sides)
    for r in range(args.rounds):
        for i, rgb in enumerate(imgs):
            k0 = (r * len(imgs) + i) % len(names)  # rotate which side goes first
            for name in names[k0:] + names[:k0]:
                wall, cpu, rec = timed_cpu(sides[name], rgb)
                times[name].append((wall, cpu))
                assert len(rec["boxes"]) <= 100 and len(rec["features"]) == len(rec["boxes"])
            print(f"  round {r} photo {i} {rgb.shape[1]}x{rgb.shape[0]}: " + ", ".join(
                f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.1f} CPU s)" for k, v in times.items()), flush=True)
            if args.stages:
                for k, v in stage_times(ours, theirs, rgb).items():
                    stages.setdefault(k, []).append(v)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    d2w, d2c = med[names[0]]
    out = {"photos": len(imgs), "rounds": args.rounds, "threads": torch.get_num_threads(), "fork": theirs.fork,
           "torch": torch.__version__, "load_before": load0, "sides": {}}
    print("\n| side | s/image (median) | images/s | speed vs detectron2 | CPU s/image | CPU-time ratio |\n"
          "|---|---|---|---|---|---|")
    for k, (w, c) in med.items():
        out["sides"][k] = {"s_per_image": w, "images_per_s": 1 / w, "cpu_s_per_image": c, "ratio": d2w / w,
                           "cpu_ratio": d2c / c, "samples": times[k]}
        print(f"| {k} | {w:.2f} | {1 / w:.4f} | {d2w / w:.2f}x | {c:.1f} | {d2c / c:.2f}x |")
    if stages:
        print("\n| stage (identical inputs) | butd s | detectron2 s | speed ratio |\n|---|---|---|---|")
        out["stages"] = {}
        for k, v in stages.items():
            b, d = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
            out["stages"][k] = {"butd_s": b, "detectron2_s": d}
            print(f"| {k} | {b:.2f} | {d:.2f} | {d / b:.2f}x |")
    if args.profile:
        with torch.inference_mode():
            print("\nbutd, top operators:\n" + profile_top(lambda: sides[names[1]](imgs[0])))
        print("detectron2, top operators:\n" + profile_top(lambda: theirs(imgs[0])))
    out["load_after"] = os.getloadavg()[0]
    print(f"load average now {out['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
