"""Attention pictures a reader can interpret: a colour heat map over the image, with its colour bar,
the word (or question and answer) printed above it, and the top-k regions labelled with their weight
and the detector's names.

Pillow does the drawing; matplotlib only provides the colour map and the DejaVu Sans font it ships,
so the pictures look the same on every machine.

- Region features: every pixel gets the summed weight of the boxes that cover it ("regions filled by
  weight"), so a region the model attends to through several overlapping boxes is hot as a whole.
- Grid features: the H x W weights are upsampled bicubically to the image (SAT's 14 x 14 grid covers
  the whole image: the grid extractors squash the image to a square, they do not crop).
The colour scale runs from the smallest to the largest value of the map; the bar prints both, so a
nearly flat soft attention is visible as such from the numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps


@dataclass(frozen=True)
class VizConfig:
    cmap: str = "turbo"  # matplotlib colour map: blue = little attention, red = most
    alpha_low: float = 0.25  # heat opacity where attention is lowest: the photo stays readable
    alpha_high: float = 0.65  # ... and where it is highest
    top_k: int = 3  # labelled boxes (region features)
    font_px: int = 12
    title_px: int = 15


@functools.lru_cache(maxsize=8)
def colormap_lut(name: str = "turbo") -> np.ndarray:
    """[256, 3] uint8 colours of a matplotlib colour map, low to high."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=16)
def font(px: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans as shipped inside matplotlib: the same glyphs everywhere, no system font needed."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), px)


def heat_field(weights: np.ndarray, size: tuple[int, int], *, boxes: np.ndarray | None = None,
               grid: tuple[int, int] | None = None, scale: float = 1.0) -> np.ndarray:
    """Attention as a [H, W] float map over an image of `size` = (W, H).

    weights: [K] over `boxes` ([K, 4] x1 y1 x2 y2 in original pixels, times `scale` to reach `size`),
    or [gh * gw] row-major over `grid` = (gh, gw).
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    width, height = size
    if grid is not None:
        gh, gw = grid
        if w.size != gh * gw:
            raise ValueError(f"{w.size} attention weights for a {gh}x{gw} grid")
        cells = Image.fromarray(w.reshape(gh, gw).astype(np.float32), mode="F")
        up = np.asarray(cells.resize((width, height), Image.BICUBIC), dtype=np.float64)
        return up.clip(w.min(), w.max())  # bicubic overshoots; keep the map within the weights
    if boxes is None or len(boxes) != w.size:
        raise ValueError(f"region attention needs one box per weight ({w.size} weights, "
                         f"{0 if boxes is None else len(boxes)} boxes)")
    field = np.zeros((height, width), dtype=np.float64)
    for (x1, y1, x2, y2), a in zip(np.asarray(boxes, dtype=np.float64) * scale, w):
        x1, y1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        x2, y2 = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        field[y1:y2, x1:x2] += a
    return field


def colorize(img: Image.Image, field: np.ndarray, cfg: VizConfig = VizConfig()) -> tuple[Image.Image, float, float]:
    """Blend the colour-mapped `field` over `img`; returns the picture and the value range of the scale."""
    lo, hi = float(field.min()), float(field.max())
    h = (field - lo) / (hi - lo) if hi > lo else np.zeros_like(field)
    colours = colormap_lut(cfg.cmap)[(h * 255).round().astype(np.int64)].astype(np.float32)
    alpha = (cfg.alpha_low + (cfg.alpha_high - cfg.alpha_low) * h)[..., None].astype(np.float32)
    base = np.asarray(img.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - alpha) + colours * alpha).round().clip(0, 255).astype(np.uint8)), lo, hi


def top_regions(weights: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest weights, largest first."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    return [int(i) for i in np.argsort(-w, kind="stable")[: max(0, k)]]


def _tag(rank: int, weight: float, label: str) -> str:
    return f"{rank} {weight:.2f}" + (f" {label}" if label else "")


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_boxes(img: Image.Image, boxes: np.ndarray, weights: np.ndarray, labels: Sequence[str],
                scale: float, cfg: VizConfig) -> None:
    """Outline the top-k boxes and tag each with rank, weight and name; tags never cover each other."""
    draw = ImageDraw.Draw(img, "RGBA")
    f = font(cfg.font_px)
    top = top_regions(weights, cfg.top_k)
    rects = [(np.asarray(boxes[i], dtype=np.float64) * scale).tolist() for i in top]
    for x1, y1, x2, y2 in reversed(rects):  # the top box's outline drawn last, on top
        draw.rectangle([x1 - 1, y1 - 1, x2 + 1, y2 + 1], outline=(0, 0, 0, 255), width=1)
        draw.rectangle([x1, y1, x2, y2], outline=(255, 255, 255, 255), width=2)
    placed: list[tuple] = []
    for rank, (i, (x1, y1, _, _)) in enumerate(zip(top, rects), start=1):  # the top box's tag placed first
        text = _tag(rank, float(weights[i]), labels[i] if i < len(labels) else "")
        left, t, r, b = draw.textbbox((0, 0), text, font=f)
        w, h = r - left + 6, b - t + 4
        x = min(max(0.0, x1), max(0.0, img.width - w))  # inside the picture
        y = max(0.0, y1)
        while any(_overlaps((x, y, x + w, y + h), p) for p in placed) and y + h < img.height:
            y += 1  # slide down past the tags already placed
        placed.append((x, y, x + w, y + h))
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(0, 0, 0, 190))
        draw.text((x + 3 - left, y + 2 - t), text, font=f, fill=(255, 255, 255, 255))


def _wrap(text: str, f: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (a single over-long word is cut by characters)."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if f.getlength(cand) <= width or not line:
                line = cand
            else:
                lines.append(line)
                line = word
            while f.getlength(line) > width and len(line) > 1:
                cut = max(1, int(len(line) * width / f.getlength(line)))
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _text_block(lines: Sequence[tuple[str, bool]], width: int, px: int, pad: int = 4) -> Image.Image:
    """White band with dark text; each entry is (text, bold)."""
    rows = [(row, bold) for text, bold in lines for row in _wrap(text, font(px, bold), width - 2 * pad)]
    line_h = int(px * 1.3)
    band = Image.new("RGB", (width, pad * 2 + line_h * max(1, len(rows))), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for n, (row, bold) in enumerate(rows):
        draw.text((pad, pad + n * line_h), row, font=font(px, bold), fill=(20, 20, 20))
    return band


def _colour_bar(width: int, lo: float, hi: float, what: str, cfg: VizConfig) -> Image.Image:
    px = cfg.font_px
    bar = Image.new("RGB", (width, 12 + int(px * 1.5)), (255, 255, 255))
    inner = max(1, width - 8)
    strip = np.repeat(colormap_lut(cfg.cmap)[np.linspace(0, 255, inner).round().astype(np.int64)][None], 10, 0)
    bar.paste(Image.fromarray(strip), (4, 1))
    draw = ImageDraw.Draw(bar)
    f = font(px)
    digits = max(2, 1 - int(np.floor(np.log10(abs(hi))))) if hi else 2  # two significant digits of the top
    left, right = f"{max(lo, 0.0) if abs(lo) < 10 ** -digits else lo:.{digits}f}", f"{hi:.{digits}f}"
    draw.text((4, 12), left, font=f, fill=(20, 20, 20))
    draw.text((width - 4 - f.getlength(right), 12), right, font=f, fill=(20, 20, 20))
    room = width - 8 - f.getlength(left) - f.getlength(right) - 16
    for text in (what, "attention"):  # the long description where it fits
        if f.getlength(text) <= room:
            draw.text(((width - f.getlength(text)) / 2, 12), text, font=f, fill=(90, 90, 90))
            break
    return bar


def _stack(parts: Sequence[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    return out


def attention_figure(img: Image.Image, weights: np.ndarray, *, title: Sequence[tuple[str, bool]] = (),
                     boxes: np.ndarray | None = None, grid: tuple[int, int] | None = None, scale: float = 1.0,
                     box_labels: Sequence[str] = (), legend: bool = False,
                     cfg: VizConfig = VizConfig()) -> Image.Image:
    """Title band, the image under its attention heat map (top-k boxes labelled), colour bar, legend.

    `img` is already at display size; `scale` maps the boxes' original pixels onto it. `box_labels` has
    one (possibly empty) name per box, e.g. "brown dog" from the detector's classes.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    field = heat_field(w, img.size, boxes=boxes, grid=grid, scale=scale)
    pic, lo, hi = colorize(img, field, cfg)
    if grid is None:
        _draw_boxes(pic, np.asarray(boxes), w, box_labels, scale, cfg)
    what = f"attention per cell ({grid[0]}x{grid[1]})" if grid else "attention (sum of boxes)"
    parts = [_text_block(title, pic.width, cfg.title_px)] if title else []
    parts += [pic, _colour_bar(pic.width, lo, hi, what, cfg)]
    if legend and grid is None:
        rows = [(f"box {_tag(r, float(w[i]), box_labels[i] if i < len(box_labels) else '')}", False)
                for r, i in enumerate(top_regions(w, cfg.top_k), start=1)]
        parts.append(_text_block(rows, pic.width, cfg.font_px))
    return _stack(parts)


def fit(img: Image.Image, max_side: int, min_side: int = 0) -> tuple[Image.Image, float]:
    """`img` as RGB with its long side brought within [min_side, max_side]; returns it and the scale."""
    long = max(img.size)
    scale = min(max_side, max(long, min_side)) / long
    if scale != 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return img.convert("RGB"), scale


def answer_figure(img: Image.Image, question: str, answers: Sequence[str], scores: Sequence[float],
                  weights: np.ndarray, *, boxes: np.ndarray | None = None, grid: tuple[int, int] | None = None,
                  box_labels: Sequence[str] = (), max_side: int = 640, min_side: int = 480,
                  cfg: VizConfig = VizConfig()) -> Image.Image:
    """The picture `butd answer` writes: question, best answer with its score, the runners-up, the heat
    map with the top-k boxes, colour bar and a legend of the boxes. Small images are enlarged to
    `min_side` so the text has room."""
    pic, scale = fit(ImageOps.exif_transpose(img), max_side, min_side)  # boxes are in EXIF-oriented pixels
    cfg = replace(cfg, font_px=max(cfg.font_px, 13), title_px=max(cfg.title_px, 17))
    title = [(f"Q: {question}", False), (f"A: {answers[0]} ({scores[0]:.2f})", True)] if answers else \
        [(f"Q: {question}", False)]
    if len(answers) > 1:
        title.append(("also: " + ", ".join(f"{a} ({s:.2f})" for a, s in zip(answers[1:], scores[1:])), False))
    return attention_figure(pic, weights, title=title, boxes=boxes, grid=grid, scale=scale,
                            box_labels=box_labels, legend=True, cfg=cfg)

