"""Build report items from finished runs (captioning or VQA): images, text and attention per word."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from butd.evaluate.region_names import box_labels, find_names
from butd.evaluate.report import ReportItem
from butd.shards import FeatureStore, read_manifest

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _image_index(roots: list[Path]) -> dict[str, Path]:
    """Map every image under the candidate roots by file stem and by the integer at its end (COCO names)."""
    index: dict[str, Path] = {}
    for root in roots:
        if root is None or not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in _IMAGE_EXT:
                index.setdefault(p.stem, p)
                m = re.search(r"(\d+)$", p.stem)
                if m:
                    index.setdefault(str(int(m.group(1))), p)
    return index


def _roots(features: str, data_file: str, images_root: Path | None) -> list[Path]:
    source = read_manifest(features).get("source") or {}
    cands = [images_root, source.get("root"), source.get("toy_root"), Path(data_file).parent,
             Path(data_file).parent.parent]
    return [Path(c) for c in cands if c]


def _geometry(rec: dict, k: int, names=None) -> dict:
    """How to draw attention over the first `k` rows of a record: its grid, or its first `k` boxes
    with the detector's name of each (`names` from `find_names`; ids when there are none)."""
    if "grid_h" in rec:
        return {"grid": (int(rec["grid_h"]), int(rec["grid_w"]))}
    return {"boxes": np.array(rec["boxes"][:k]), "box_labels": box_labels(rec, names, k)}


def caption_items(run: Path, split: str, n: int, images_root: Path | None) -> list[ReportItem]:
    """Greedy captions of the first `n` images of `split`, with each word's attention."""
    from butd.datasets.captions import CaptionDataset, collate_captions, load_karpathy, split_images
    from butd.models.decoding import greedy_decode
    from butd.train.caption import load_caption_run
    from butd.train.scst import tokens_to_text

    cfg, model, vocab, info = load_caption_run(run)
    store = FeatureStore(info["features"])
    images = split_images(load_karpathy(info["captions"]), split)[:n]
    if not images:
        raise ValueError(f"split {split!r} has no images")
    ds = CaptionDataset(images, store, vocab, cfg.data, per_caption=False, skip_missing=True)
    batch = collate_captions([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = greedy_decode(model, batch["feats"], batch["mask"], cfg.data.max_len)
    texts = tokens_to_text(out["tokens"], vocab)
    index = _image_index(_roots(info["features"], info["captions"], images_root))
    names = find_names(info["features"], read_manifest(info["features"]))
    items = []
    for b, im in enumerate(ds.images):
        path = index.get(im.image_id)
        if path is None:
            raise ValueError(f"image {im.image_id} not found; pass --images-root")
        words = texts[b].split()
        k = int(batch["mask"][b].sum())
        frames = tuple((w, out["attn"][b, t, :k].numpy()) for t, w in enumerate(words))
        lines = (("caption", texts[b]), *(("reference", r) for r in im.raw[:3]))
        items.append(ReportItem(im.image_id, path, lines, frames, **_geometry(store[im.image_id], k, names)))
    return items


def vqa_items(run: Path, split: str, n: int, images_root: Path | None) -> list[ReportItem]:
    """The first `n` questions of `split`: question, answer, ground truth and attended regions."""
    from butd.datasets.vqa import VQADataset, join_store, load_vqa
    from butd.train.vqa import load_run, split_files

    model, cfg, vocab, answers, info = load_run(run)
    questions, annotations = split_files(info, split)
    store = FeatureStore(info["paths"]["features"])
    examples, _ = join_store(load_vqa(questions, annotations), store, True)
    examples = examples[:n]
    ds = VQADataset(examples, store, vocab, answers, cfg.data)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("tokens", "features", "mask")}
    results = model.answer(batch, answers, k=5)
    first = questions[0] if isinstance(questions, list) else questions
    index = _image_index(_roots(info["paths"]["features"], first, images_root))
    names = find_names(info["paths"]["features"], read_manifest(info["paths"]["features"]))
    items = []
    for ex, res in zip(examples, results):
        path = index.get(str(ex.image_id))
        if path is None:
            raise ValueError(f"image {ex.image_id} not found; pass --images-root")
        rec = store[str(ex.image_id)]
        weights = np.asarray(res["attention"])
        title = f"Q: {ex.question}\nA: {res['answers'][0]} ({res['scores'][0]:.2f})"
        items.append(ReportItem(f"q{ex.question_id}", path, (("question", ex.question), ("image", str(ex.image_id))),
                                ((title, weights),), answers=tuple(zip(res["answers"], res["scores"])),
                                truth=tuple(ex.answers), answer_type=ex.answer_type,
                                **_geometry(rec, len(weights), names)))
    return items
