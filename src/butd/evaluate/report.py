"""HTML reports: each image with its text and an attention picture per word (captioning) or per
question (VQA: top answers with scores, the human answers, a right/wrong mark, accuracy by type).

Rendering only: the task layer prepares `ReportItem`s from a run. The pictures are either embedded in
the page (one file to share, the default) or written to `<stem>_files/` and referenced, never both.
Photos under a heat map compress poorly as PNG: 12 photos with 10 word pictures each came to 17 MB
embedded as PNG, 2.1 MB as JPEG (quality 75) and 1.4 MB as WebP (quality 75), which every current
browser shows. So pictures are WebP by default; `ReportConfig(image_format="png")` keeps them lossless.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from butd.evaluate.attention_viz import VizConfig, attention_figure, fit
from butd.evaluate.vqa_accuracy import answer_accuracy, question_types

_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}


@dataclass(frozen=True)
class ReportItem:
    """One image (captioning) or one question (VQA) of a report.

    attention: one (text printed on the picture, weights) per generated word, or one for a VQA answer.
    weights is [K] over `boxes` ([K,4] x1y1x2y2 in original pixels) for region features, or [H*W] over
    a `grid` = (H, W) for grid features. box_labels: the detector's name of each box ("brown dog").
    answers: VQA top answers with their scores, best first; truth: the human answers (10 in VQA v2).
    """

    image_id: str
    image_path: Path
    lines: tuple[tuple[str, str], ...]  # (label, text), e.g. ("caption", "a red circle ...")
    attention: tuple[tuple[str, np.ndarray], ...] = ()
    boxes: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)
    box_labels: tuple[str, ...] = ()
    answers: tuple[tuple[str, float], ...] = ()
    truth: tuple[str, ...] = ()
    answer_type: str = ""
    question_type: str = ""


@dataclass(frozen=True)
class ReportConfig:
    max_side: int = 320  # the plain image
    frame_side: int = 224  # each attention picture (SAT's input size)
    image_format: str = "webp"  # webp | jpeg | png (see the module docstring for sizes)
    quality: int = 75  # jpeg / webp
    embed: bool = True  # True: one self-contained page; False: pictures in <stem>_files/, referenced
    viz: VizConfig = VizConfig()


def encode(img: Image.Image, cfg: ReportConfig) -> bytes:
    """The picture as bytes in `cfg.image_format` (PNG lossless; JPEG / WebP at `cfg.quality`)."""
    if cfg.image_format not in _MIME:
        raise ValueError(f"image_format {cfg.image_format!r}: choose from {', '.join(_MIME)}")
    opts = {"png": {"optimize": True}, "jpeg": {"quality": cfg.quality, "optimize": True},
            "webp": {"quality": cfg.quality, "method": 4}}[cfg.image_format]
    buf = io.BytesIO()
    img.save(buf, format=cfg.image_format.upper(), **opts)
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]


def _mark(acc: float) -> tuple[str, str]:
    """(symbol, css class) of an official VQA accuracy in [0, 1]."""
    if acc >= 1.0:
        return "\u2713", "right"
    return ("\u2248", "partly") if acc > 0 else ("\u2717", "wrong")


def item_accuracy(item: ReportItem) -> float | None:
    """Official accuracy of the item's best answer, or None without answers or human answers."""
    return answer_accuracy(item.answers[0][0], item.truth) if item.answers and item.truth else None


def figures(item: ReportItem, cfg: ReportConfig) -> list[tuple[str, Image.Image]]:
    """(label, picture) of an item: the plain image, then one attention picture per entry."""
    with Image.open(item.image_path) as im:
        upright = ImageOps.exif_transpose(im)  # boxes are in EXIF-oriented pixels (features_spec.md)
    thumb, thumb_scale = fit(upright, cfg.max_side)
    vqa = bool(item.answers)  # one picture with a legend, at full thumbnail size
    base, scale = (thumb, thumb_scale) if vqa else fit(upright, cfg.frame_side)
    out = [("image", thumb)]
    for label, weights in item.attention:
        out.append((label, attention_figure(base, weights, title=[(label, True)], boxes=item.boxes, grid=item.grid,
                                            scale=scale, box_labels=item.box_labels, legend=vqa, cfg=cfg.viz)))
    return out


def _vqa_html(item: ReportItem) -> str:
    rows = []
    for rank, (ans, score) in enumerate(item.answers, start=1):
        acc = answer_accuracy(ans, item.truth) if item.truth else None
        mark = "" if acc is None else '<td class="{1}">{0} {2:.1f}</td>'.format(*_mark(acc), acc)
        rows.append(f"<tr><td>{rank}</td><td>{html.escape(ans)}</td><td>{score:.3f}</td>{mark}</tr>")
    head = "<tr><th>#</th><th>answer</th><th>score</th>" + ("<th>accuracy</th>" if item.truth else "") + "</tr>"
    truth = ", ".join(f"{html.escape(a)} \u00d7{n}" if n > 1 else html.escape(a)
                      for a, n in Counter(item.truth).most_common())
    kind = f" <span class=\"type\">({html.escape(item.answer_type)})</span>" if item.answer_type else ""
    return (f'<table class="answers">{head}{"".join(rows)}</table>'
            f"<p><b>ground truth</b>{kind} {truth or '—'}</p>")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary_html(items: list[ReportItem]) -> str:
    images = len({str(i.image_path) for i in items})
    if not any(i.answers for i in items):
        return f"<p>{_count(len(items), 'image')}</p>"
    scored = [(i, acc) for i in items if (acc := item_accuracy(i)) is not None]
    text = f"<p>{_count(len(items), 'question')} on {_count(images, 'image')}"
    if not scored:
        return text + " (no human answers to score against)</p>"
    overall = 100 * sum(a for _, a in scored) / len(scored)
    return (f"{text}; accuracy {overall:.1f} on the {len(scored)} with human answers</p>"
            + _type_table("answer type", [(i.answer_type or "all", a) for i, a in scored], sorted)
            + _type_table("question type", [(i.question_type, a) for i, a in scored if i.question_type],
                          _official_order))


def _official_order(types: Any) -> list[str]:
    """The official evaluator's question types first, in its order; others after, alphabetically."""
    order = {t: n for n, t in enumerate(question_types())}
    return sorted(types, key=lambda t: (order.get(t, len(order)), t))


def _type_table(head: str, scored: list[tuple[str, float]], order: Any) -> str:
    if not scored:
        return ""
    by_type: dict[str, list[float]] = defaultdict(list)
    for kind, acc in scored:
        by_type[kind].append(acc)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{len(by_type[k])}</td>"
                   f"<td>{100 * sum(by_type[k]) / len(by_type[k]):.1f}</td></tr>" for k in order(by_type))
    return f'<table class="summary"><tr><th>{head}</th><th>questions</th><th>accuracy</th></tr>{rows}</table>'



_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.item { background: white; border: 1px solid #ddd; border-radius: 6px; padding: .8em; margin-bottom: 1.2em; }
.figs { display: flex; flex-wrap: wrap; gap: .5em; align-items: flex-start; }
figure { margin: 0; }
h2 { font-size: 1em; margin: 0 0 .4em; }
p { margin: .2em 0; }
table { border-collapse: collapse; margin: .3em 0; font-size: 95%; }
td, th { border: 1px solid #ddd; padding: .1em .5em; text-align: left; }
.right { color: #1a7f37; font-weight: bold; } .wrong { color: #c62828; font-weight: bold; }
.partly { color: #b26a00; font-weight: bold; } .type { color: #777; }
"""

_SCRIPT = """<script>
// self-check for headless tests: count images that decoded (naturalWidth > 0)
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def _card(n: int, item: ReportItem, cfg: ReportConfig, files: Path) -> str:
    """One item's HTML; its pictures are embedded, or written into `files` and linked by its final name."""
    ext, mime = _EXT[cfg.image_format], _MIME[cfg.image_format]
    parts = []
    for i, (label, fig) in enumerate(figures(item, cfg)):
        data = encode(fig, cfg)
        if cfg.embed:
            src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        else:
            name = f"{n:04d}_{_safe(item.image_id)}_{i:02d}_{_safe(label)}.{ext}"
            (files / name).write_bytes(data)
            src = f"{files.name.removesuffix('.tmp')}/{name}"
        parts.append(f'<figure><img alt="{html.escape(label)}" src="{html.escape(src)}" '
                     f'width="{fig.width}" height="{fig.height}"></figure>')
    acc = item_accuracy(item)
    mark = "" if acc is None else ' <span class="{1}">{0}</span>'.format(*_mark(acc))
    text = "".join(f"<p><b>{html.escape(k)}</b> {html.escape(v)}</p>" for k, v in item.lines)
    text += _vqa_html(item) if item.answers else ""
    return (f'<section class="item" id="{html.escape(_safe(item.image_id))}">'
            f"<h2>{html.escape(item.image_id)}{mark}</h2>{text}"
            f"<div class=\"figs\">{''.join(parts)}</div></section>")


def _bar(items: list[ReportItem]) -> Iterable[ReportItem]:
    """The items under a progress bar when stderr is a terminal (pictures take a while)."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc="report", unit="item", leave=False, file=sys.stderr, dynamic_ncols=True)


def write_report(items: list[ReportItem], out: str | Path, *, title: str = "butd report",
                 cfg: ReportConfig = ReportConfig()) -> Path:
    """Write the page `out`; with `cfg.embed=False` also `<stem>_files/` holding the pictures it links.

    The page is written to a temporary name and renamed last, so a failure leaves no half page.
    """
    out = Path(out)
    files_dir = out.with_name(out.stem + "_files")
    tmp_dir = out.with_name(out.stem + "_files.tmp")
    if cfg.image_format not in _MIME:
        raise ValueError(f"image_format {cfg.image_format!r}: choose from {', '.join(_MIME)}")
    if not cfg.embed:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
    try:
        cards = [_card(n, item, cfg, tmp_dir) for n, item in enumerate(_bar(items))]
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{_summary_html(items)}\n"
            f"{''.join(cards)}\n{_SCRIPT}\n</body></html>\n")
    tmp_page = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)  # `--out reports/x.html` into a folder not made yet
    tmp_page.write_text(page, encoding="utf-8")
    if not cfg.embed:
        shutil.rmtree(files_dir, ignore_errors=True)
        tmp_dir.rename(files_dir)
    os.replace(tmp_page, out)
    return out
