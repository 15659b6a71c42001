"""Detector input preprocessing, one rule per checkpoint layout (the layout is recorded in the manifest).

Both rules turn an RGB uint8 [H, W, 3] photo into a mean-subtracted BGR float32 [3, h, w] blob with
the short side at 600 and the long side at most 1000. They differ in the resize, and the difference is
not negligible (input pixels differ by up to 35 on real photos), so each layout uses its original's:

* ``"caffe"`` — bottom-up-attention (Caffe ``_get_image_blob``) and bottom-up-attention.pytorch: the
  scale is ``600 / short`` unless ``round(scale * long) > 1000``, then ``1000 / long``; the image is
  converted to float, the BGR pixel means are subtracted, then ``cv2.resize(im, None, None, fx=s, fy=s,
  interpolation=INTER_LINEAR)``. OpenCV derives the output size as ``round(w * s)`` x ``round(h * s)``
  (round half to even) and maps output pixel ``d`` to source ``(d + 0.5) / s - 0.5`` from the *scale*,
  not from the rounded sizes; no antialiasing, edge pixels clamped. Implemented here with torch
  (bilinear, ``align_corners=False``, explicit scale, one replicated edge row/column so a size rounded
  up reads the clamped edge exactly as OpenCV does); tests compare it with OpenCV.
* ``"d2"`` — py-bottom-up-attention (detectron2 ``ResizeShortestEdge(600, 1000)`` +
  ``ResizeTransform``): ``s = 600 / short``, sizes ``(s*h, s*w)`` with the short side exactly 600; if
  the long side exceeds 1000 both are multiplied by ``1000 / long``; each side is ``int(x + 0.5)``;
  then Pillow ``resize((w, h), BILINEAR)`` on the uint8 image (Pillow's bilinear widens its kernel
  when shrinking, i.e. it antialiases). The pixel means are subtracted afterwards. Boxes map back with
  per-axis scales ``(w / W, h / H)`` as detectron2's ``detector_postprocess`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from butd.registry import Entry, Registry

# Caffe cfg.PIXEL_MEANS (BGR) = py-bottom-up-attention / bua-caffe MODEL.PIXEL_MEAN
PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)
TEST_SCALE = 600  # TEST.SCALES = (600,)
TEST_MAX_SIZE = 1000  # TEST.MAX_SIZE


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return image


def caffe_scale(h: int, w: int, scale: int = TEST_SCALE, max_size: int = TEST_MAX_SIZE) -> float:
    """The scale ``_get_image_blob`` computes (``np.round`` is half-to-even, as Python's ``round``)."""
    s = float(scale) / float(min(h, w))
    if round(s * max(h, w)) > max_size:
        s = float(max_size) / float(max(h, w))
    return s


def caffe_size(h: int, w: int, s: float) -> tuple[int, int]:
    """OpenCV's output size for ``fx = fy = s``: ``saturate_cast<int>(side * s)`` (round half to even)."""
    return max(int(round(h * s)), 1), max(int(round(w * s)), 1)


def d2_size(h: int, w: int, short: int = TEST_SCALE, max_size: int = TEST_MAX_SIZE) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_transform`` output size (new_h, new_w)."""
    s = short * 1.0 / min(h, w)
    nh, nw = (short, s * w) if h < w else (s * h, short)
    if max(nh, nw) > max_size:
        k = max_size * 1.0 / max(nh, nw)
        nh, nw = nh * k, nw * k
    return int(nh + 0.5), int(nw + 0.5)


def resize_bilinear_scale(x: torch.Tensor, s: float, size: tuple[int, int]) -> torch.Tensor:
    """x (N, C, H, W) float -> (N, C, *size), OpenCV INTER_LINEAR mapping for fx = fy = s."""
    h, w = x.shape[-2:]
    if size == (h, w) and s == 1.0:
        return x
    # pad replicated rows/columns: a rounded-up output row reads the clamped edge, as in OpenCV
    p = max(1, math.ceil(1.0 / s))
    xp = F.pad(x, (0, p, 0, p), mode="replicate")
    y = F.interpolate(xp, scale_factor=(s, s), mode="bilinear", align_corners=False,
                      recompute_scale_factor=False)
    return y[..., : size[0], : size[1]]


@dataclass(frozen=True)
class CaffePreprocessor:
    """RGB uint8 [H, W, 3] -> mean-subtracted BGR float32 [3, h, w], Caffe / bottom-up-attention.pytorch."""

    scale: int = TEST_SCALE
    max_size: int = TEST_MAX_SIZE
    name: str = "caffe"

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        image = _check(image)
        h, w = image.shape[:2]
        s = caffe_scale(h, w, self.scale, self.max_size)
        size = caffe_size(h, w, s)
        x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).float()
        x = (x - torch.tensor(PIXEL_MEANS_BGR)).permute(2, 0, 1)[None]
        x = resize_bilinear_scale(x, s, size)
        return {"image": x[0].contiguous().numpy(), "scale": float(s), "orig_hw": (int(h), int(w))}


@dataclass(frozen=True)
class D2Preprocessor:
    """RGB uint8 [H, W, 3] -> mean-subtracted BGR float32 [3, h, w], py-bottom-up-attention (detectron2)."""

    scale: int = TEST_SCALE
    max_size: int = TEST_MAX_SIZE
    name: str = "d2"

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        image = _check(image)
        h, w = image.shape[:2]
        nh, nw = d2_size(h, w, self.scale, self.max_size)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        if (nh, nw) != (h, w):
            bgr = np.array(Image.fromarray(bgr).resize((nw, nh), Image.BILINEAR))
        x = torch.from_numpy(np.ascontiguousarray(bgr)).float() - torch.tensor(PIXEL_MEANS_BGR)
        # per-axis scales (x, y): detector_postprocess maps boxes back with (W / w, H / h)
        return {"image": x.permute(2, 0, 1).contiguous().numpy(), "scale": (nw / w, nh / h),
                "orig_hw": (int(h), int(w))}


# layout -> Entry(None, preprocessor class); butd.registry style
PREPROCESSORS = Registry("preprocessing layout", {
    "caffe": Entry(None, CaffePreprocessor, "cv2 resize by the scale factor on float BGR (the Caffe original)"),
    "d2": Entry(None, D2Preprocessor, "Pillow bilinear on uint8 to detectron2's rounded size (py-bottom-up-attention)"),
})


def build_preprocessor(layout: str, scale: int = TEST_SCALE, max_size: int = TEST_MAX_SIZE):
    return PREPROCESSORS.build(layout, int(scale), int(max_size))
