"""Self-contained HTML reports: each image with its text and the attention of every word.

Rendering only: callers (captioning and VQA evaluation) prepare `ReportItem`s from a run. Images are
embedded as base64 PNG so the page is one file; the same PNGs are also written beside it.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MAX_SIDE = 320  # thumbnails keep a 50-image report small


@dataclass(frozen=True)
class ReportItem:
    """One image of a report.

    attention: one (label, weights) per generated word (or one for a VQA answer). weights is [K]
    over `boxes` ([K,4] x1y1x2y2 in original pixels) for region features, or [H*W] over a
    `grid` = (H, W) for grid features.
    """

    image_id: str
    image_path: Path
    lines: tuple[tuple[str, str], ...]  # (label, text), e.g. ("caption", "a red circle ...")
    attention: tuple[tuple[str, np.ndarray], ...] = ()
    boxes: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)


def _thumb(img: Image.Image) -> tuple[Image.Image, float]:
    scale = min(1.0, MAX_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return img.convert("RGB"), scale


def render_attention(img: Image.Image, weights: np.ndarray, *, boxes: np.ndarray | None = None,
                     grid: tuple[int, int] | None = None, scale: float = 1.0) -> Image.Image:
    """Overlay attention on an image: a heat map for a grid, shaded boxes for regions."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size and w.max() > w.min():  # stretch to [0, 1]: soft attention is often nearly flat
        w = (w - w.min()) / (w.max() - w.min())
    elif w.size:
        w = np.ones_like(w)
    base = np.asarray(img, dtype=np.float32)
    if grid is not None:
        gh, gw = grid
        if w.size != gh * gw:
            raise ValueError(f"{w.size} attention weights for a {gh}x{gw} grid")
        heat = Image.fromarray((w.reshape(gh, gw) * 255).astype(np.uint8)).resize(img.size, Image.BICUBIC)
        h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
        out = base * (0.15 + 0.85 * h)  # dim what is not attended
        return Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if boxes is None or len(boxes) != w.size:
        raise ValueError("region attention needs one box per weight")
    mask = np.zeros(base.shape[:2], dtype=np.float32)
    for (x1, y1, x2, y2), a in zip(np.asarray(boxes, dtype=np.float64) * scale, w):
        ys, xs = slice(max(0, int(y1)), max(0, int(np.ceil(y2)))), slice(max(0, int(x1)), max(0, int(np.ceil(x2))))
        mask[ys, xs] = np.maximum(mask[ys, xs], a)
    out = Image.fromarray((base * (0.15 + 0.85 * mask[..., None])).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    top = int(np.argmax(w))
    x1, y1, x2, y2 = (np.asarray(boxes[top], dtype=np.float64) * scale).tolist()
    draw.rectangle([x1, y1, x2, y2], outline=(255, 220, 0), width=2)
    return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]


def write_report(items: list[ReportItem], out: str | Path, *, title: str = "butd report") -> Path:
    """Write `out` (HTML) and `out`'s stem + `_png/` with one PNG per image and per attended word."""
    out = Path(out)
    png_dir = out.with_name(out.stem + "_png")
    png_dir.mkdir(parents=True, exist_ok=True)
    cards = []
    for item in items:
        with Image.open(item.image_path) as im:
            thumb, scale = _thumb(im)
        figs = [("image", thumb)]
        for label, weights in item.attention:
            figs.append((label, render_attention(thumb, weights, boxes=item.boxes, grid=item.grid, scale=scale)))
        parts = []
        for i, (label, fig) in enumerate(figs):
            data = _png(fig)  # encoded once: written beside the page and embedded in it
            (png_dir / f"{_safe(item.image_id)}_{i:02d}_{_safe(label)}.png").write_bytes(data)
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(label)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{html.escape(label)}</figcaption></figure>")
        text = "".join(f"<p><b>{html.escape(k)}</b> {html.escape(v)}</p>" for k, v in item.lines)
        cards.append(f'<section class="item" id="{html.escape(_safe(item.image_id))}">'
                     f"<h2>{html.escape(item.image_id)}</h2>{text}<div class=\"figs\">{''.join(parts)}</div></section>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.item {{ background: white; border: 1px solid #ddd; border-radius: 6px; padding: .8em; margin-bottom: 1.2em; }}
.figs {{ display: flex; flex-wrap: wrap; gap: .5em; }}
figure {{ margin: 0; text-align: center; font-size: 90%; }}
h2 {{ font-size: 1em; margin: 0 0 .4em; }}
p {{ margin: .2em 0; }}
</style></head><body><h1>{html.escape(title)}</h1><p>{len(items)} images</p>
{''.join(cards)}
<script>
// self-check for headless tests: count images that decoded (naturalWidth > 0)
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
    out.write_text(page, encoding="utf-8")
    return out
