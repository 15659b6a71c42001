"""Detector preprocessing per layout, against the reference libraries: OpenCV (caffe) and Pillow (d2)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from butd.extract.images import load_image
from butd.extract.preprocess import (
    PIXEL_MEANS_BGR,
    CaffePreprocessor,
    D2Preprocessor,
    build_preprocessor,
    caffe_scale,
    d2_size,
)

cv2 = pytest.importorskip("cv2")
MEANS = np.asarray(PIXEL_MEANS_BGR, np.float32)
# odd sizes: 1xN, Nx1, already 600 (no resize), upscaled, shrunk, long side capped, half-way rounding
SIZES = [(1, 37), (37, 1), (1, 1), (600, 800), (600, 600), (300, 451), (50, 70), (872, 1000), (1200, 1600),
         (3000, 2000), (599, 1001), (333, 1000), (4000, 3), (601, 1003), (7, 11)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from butd.demo import shipped_photos

    paths = shipped_photos(tmp_path_factory.mktemp("photos"))
    if not paths:
        pytest.skip("no shipped photos (install the [dev] extras)")
    return {p.name: load_image(p).array for p in paths}


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def cv2_reference(rgb: np.ndarray):
    """bottom-up-attention _get_image_blob, written with OpenCV as the original does."""
    im = rgb[:, :, ::-1].astype(np.float32) - MEANS
    h, w = rgb.shape[:2]
    s = float(600) / float(min(h, w))
    if np.round(s * max(h, w)) > 1000:
        s = float(1000) / float(max(h, w))
    out = cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    return (out if out.ndim == 3 else out[:, :, None]), s


def pil_reference(rgb: np.ndarray):
    """detectron2 ResizeShortestEdge(600, 1000) + ResizeTransform (Pillow BILINEAR on uint8), written out."""
    h, w = rgb.shape[:2]
    s = 600 / min(h, w)
    nh, nw = (600, s * w) if h < w else (s * h, 600)
    if max(nh, nw) > 1000:
        k = 1000 / max(nh, nw)
        nh, nw = nh * k, nw * k
    nh, nw = int(nh + 0.5), int(nw + 0.5)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    out = np.asarray(Image.fromarray(bgr).resize((nw, nh), Image.BILINEAR)).astype(np.float32)
    return out - MEANS, (nw / w, nh / h)


def _check_caffe(rgb, tol=0.05):
    got = CaffePreprocessor()(rgb)
    ref, s = cv2_reference(rgb)
    assert got["scale"] == s and got["orig_hw"] == rgb.shape[:2]
    assert got["image"].shape == (3, *ref.shape[:2])
    assert float(np.abs(got["image"].transpose(1, 2, 0) - ref).max()) <= tol


def _check_d2(rgb):
    got = D2Preprocessor()(rgb)
    ref, sxy = pil_reference(rgb)
    assert tuple(got["scale"]) == sxy and got["image"].shape == (3, *ref.shape[:2])
    np.testing.assert_array_equal(got["image"].transpose(1, 2, 0), ref)


@pytest.mark.parametrize("hw", SIZES)
def test_caffe_resize_matches_opencv_at_odd_sizes(hw):
    _check_caffe(_noise(*hw))  # noise: the worst case for any interpolation difference


@pytest.mark.parametrize("hw", SIZES)
def test_d2_resize_matches_pillow_at_odd_sizes(hw):
    _check_d2(_noise(*hw, seed=1))


def test_both_match_their_reference_on_the_shipped_photos(photos):
    for rgb in photos.values():
        _check_caffe(rgb, tol=0.02)
        _check_d2(rgb)


def test_shipped_photo_crops_and_resizes(photos):
    """Real pixels at odd sizes: crops (1 x N strips, off-centre) and resizes of the shipped photos."""
    rgb = next(iter(photos.values()))
    h, w = rgb.shape[:2]
    for arr in (rgb[:1], rgb[:, :1], rgb[3: h - 5, 7:], rgb[: h // 3, : w // 2]):
        _check_caffe(np.ascontiguousarray(arr))
        _check_d2(np.ascontiguousarray(arr))


def test_the_two_rules_differ_where_the_issue_says():
    # sizes: caffe rounds scale*side (half to even), d2 int(x + 0.5) on the capped size
    assert caffe_scale(300, 451) == 2.0 and d2_size(300, 451) == (600, 902)
    assert d2_size(333, 1000) == (333, 1000) and caffe_scale(333, 1000) == 1.0
    # and the pixels: Pillow antialiases a shrink, OpenCV INTER_LINEAR does not
    rgb = _noise(1200, 1600, 3)
    a, b = CaffePreprocessor()(rgb)["image"], D2Preprocessor()(rgb)["image"]
    assert a.shape == b.shape and float(np.abs(a - b).max()) > 20


def test_registry_and_bad_input():
    assert isinstance(build_preprocessor("caffe"), CaffePreprocessor)
    assert isinstance(build_preprocessor("d2", 160, 320), D2Preprocessor)
    with pytest.raises(ValueError, match="unknown preprocessing layout"):
        build_preprocessor("yolo")
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="expected an RGB image"):
            CaffePreprocessor()(bad)
