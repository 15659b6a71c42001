"""Decoding: every Pillow mode -> RGB uint8, EXIF orientation applied, size caps, broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from butd.extract.images import ImageDecodeError, decode_image, load_image


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _check(dec, h: int, w: int) -> np.ndarray:
    a = dec.array
    assert a.dtype == np.uint8 and a.shape == (h, w, 3) and a.flags["C_CONTIGUOUS"]
    assert (dec.width, dec.height) == (w, h)
    return a


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    a = _check(load_image(p), 20, 30)
    assert a[..., 0].mean() > 200 and a[..., 1].mean() < 60  # red


def test_16bit_png(tmp_path: Path) -> None:
    raw = np.full((12, 16), 65535, np.uint16)
    raw[:, :8] = 32768
    p = _save(Image.fromarray(raw), tmp_path / "g16.png")
    a = _check(load_image(p), 12, 16)
    assert a[0, 0, 0] == 128 and a[0, 15, 2] == 255


@pytest.mark.parametrize("mode", ["L", "P", "1"])
def test_gray_palette_bilevel(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGB", (9, 7), (255, 255, 255)).convert(mode)
    a = _check(load_image(_save(img, tmp_path / f"x_{mode}.png")), 7, 9)
    assert (a == 255).all()


def test_alpha_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :3, 3] = 255  # left half opaque red, right half transparent
    a = _check(load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")), 5, 6)
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[0, 5]) == (255, 255, 255)
    la = Image.fromarray(np.stack([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    assert (_check(load_image(_save(la, tmp_path / "la.png")), 4, 4) == 255).all()


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue (as stored)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    a = _check(load_image(p), 40, 20)  # displayed: 20 wide, 40 high
    assert a[2, 10, 0] > 200 and a[37, 10, 2] > 200  # stored-left (red) is now on top


def test_extreme_aspect_and_pixel_cap(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (20000, 20), (1, 2, 3)), tmp_path / "wide.png")
    _check(load_image(p), 20, 20000)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(p, max_pixels=100_000)


def test_jpeg_draft_keeps_full_geometry(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (800, 600), (10, 200, 30)), tmp_path / "big.jpg")
    dec = load_image(p, min_side=100)
    assert (dec.width, dec.height) == (800, 600)
    assert min(dec.array.shape[:2]) >= 100 and dec.array.shape[1] < 800


def test_broken_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    reasons = {}
    for name in ("empty.jpg", "text.jpg", "trunc.jpg", "missing.jpg"):
        with pytest.raises(ImageDecodeError) as ei:
            load_image(tmp_path / name)
        reasons[name] = ei.value.reason
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["trunc.jpg"] or "decode failed" in reasons["trunc.jpg"]
    with pytest.raises(ImageDecodeError):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
