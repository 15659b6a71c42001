"""Image decoding for extraction: bytes -> RGB uint8 [H, W, 3], robust to odd modes and broken files.

Orientation: the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so ``width``/``height``
and every box in a store are in the *displayed* orientation, not the raw sensor layout.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "DecodedImage", "ImageDecodeError", "decode_image", "load_image", "to_rgb"]

MAX_PIXELS = 50_000_000  # decoded pixels allowed per image (after JPEG draft reduction)
_ROTATING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageDecodeError(Exception):
    """The file is not a decodable image; ``reason`` is a short one-line explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image [H, W, 3] uint8 plus the full-resolution (oriented) size of the source file.

    ``width``/``height`` differ from the array's size only when a JPEG was draft-decoded at a reduced scale.
    """

    array: np.ndarray
    width: int
    height: int


def _alpha_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to RGB uint8 [H, W, 3] (alpha composited on white)."""
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im, dtype=np.uint8)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        arr = np.asarray(_alpha_on_white(im), dtype=np.uint8)
    elif mode.startswith("I;16") or mode in ("I", "F"):
        raw = np.asarray(im).astype(np.float64)
        if mode == "F":
            top = 1.0 if raw.size and float(raw.max()) <= 1.0 else 255.0
        elif mode == "I" and raw.size and float(raw.max()) <= 255.0:
            top = 255.0
        else:
            top = 65535.0  # 16-bit samples (I;16* or 16-bit data widened to I)
        gray = np.clip(np.rint(raw * (255.0 / top)), 0, 255).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    else:  # L, 1, P, CMYK, YCbCr, HSV, ...
        try:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as e:
            raise ImageDecodeError(f"cannot convert mode {mode} to RGB: {e}") from e
    return np.ascontiguousarray(arr)


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, min_side: int | None = None) -> DecodedImage:
    """Decode encoded image bytes to a :class:`DecodedImage` (array [H, W, 3] uint8, oriented).

    ``min_side``: a JPEG may be decoded at a reduced DCT scale as long as both sides stay >= it
    (speed for grid nets that resize to e.g. 224 anyway). More than ``max_pixels`` decoded pixels
    raises :class:`ImageDecodeError`, as do empty, truncated and non-image files.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            exif = im.getexif() if hasattr(im, "getexif") else {}
            oriented = (h, w) if exif.get(0x0112) in _ROTATING else (w, h)
            if im.format == "JPEG" and (min_side or w * h > max_pixels):
                want = min_side or 1
                if w * h > max_pixels:  # shrink to the cap, never below min_side
                    f = (max_pixels / (w * h)) ** 0.5
                    want = max(want, int(min(w, h) * f))
                im.draft("RGB", (want, want))
            if im.size[0] * im.size[1] > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the "
                    f"{max_pixels / 1e6:.0f} MP cap")
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = to_rgb(im)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not an image (unidentified format)") from e
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageDecodeError(f"decode failed: {msg}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(f"decoded to an unusable array of shape {arr.shape}")
    return DecodedImage(arr, int(oriented[0]), int(oriented[1]))


def load_image(path: str | Path, *, max_pixels: int = MAX_PIXELS,
               min_side: int | None = None) -> DecodedImage:
    """Read and decode a file; unreadable files raise :class:`ImageDecodeError` too."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"cannot read file: {e.strerror or e}") from e
    return decode_image(data, max_pixels=max_pixels, min_side=min_side)
