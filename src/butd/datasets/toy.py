"""Deterministic synthetic "toy world": coloured shapes on textured backgrounds.

It is the embedded default data for tests and demos: everything a caption, VQA or feature-extraction
pipeline reads is written in the public COCO / Karpathy / VQA v2 / Visual Genome layouts, so generic loaders
work unchanged. Colour, shape and count are visible in every region, so models can learn the task quickly.
The same :class:`ToyConfig` always writes byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from butd.datasets.toy_text import ToyObject, make_answers, make_captions, make_questions, tokenize
from butd.datasets.toy_truth import write_truth_files

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "ToyConfig", "make_toy_world"]


@dataclass(frozen=True)
class ToyConfig:
    """Size and randomness of a toy world."""

    n_images: int = 200
    seed: int = 0
    min_size: int = 160  # image side range in px, w and h drawn independently
    max_size: int = 320
    max_objects: int = 4  # 1..max_objects per image
    noise_answers: float = 0.1  # prob each of the 10 VQA answers is replaced by a wrong one

    def __post_init__(self) -> None:
        if self.n_images < 1 or self.max_objects < 1:
            raise ValueError("n_images and max_objects must be >= 1")
        if not 64 <= self.min_size <= self.max_size:
            raise ValueError("need 64 <= min_size <= max_size")
        if not 0.0 <= self.noise_answers <= 1.0:
            raise ValueError("noise_answers must be in [0, 1]")


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (40, 200, 70),
    "blue": (35, 65, 225),
    "yellow": (245, 225, 35),
    "purple": (145, 45, 185),
    "orange": (250, 140, 20),
    "white": (248, 248, 248),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
BACKGROUNDS: tuple[str, ...] = ("gray", "sand", "grass", "sky")

# base RGB, gradient / blotch / fine-grain / vertical-streak amplitudes
_BG_STYLE: dict[str, tuple[tuple[int, int, int], float, float, float, float]] = {
    "gray": ((118, 118, 122), 18.0, 8.0, 4.0, 0.0),
    "sand": ((196, 172, 126), 10.0, 10.0, 9.0, 0.0),
    "grass": ((72, 108, 48), 8.0, 8.0, 5.0, 12.0),
    "sky": ((118, 168, 222), 16.0, 0.0, 2.0, 0.0),
}
_MIN_FRAC, _MAX_FRAC = 0.20, 0.45  # object side as a fraction of the image's short side
_GAP = 3  # px of free space kept between object boxes (so IoU == 0)
_PLACE_TRIES = 60
_JPEG_QUALITY = 90
_INFO = {"description": "butd toy world (synthetic)", "version": "1.0", "year": 2014,
         "contributor": "butd", "date_created": "2014-01-01"}


def _smooth_noise(w: int, h: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Bilinearly upsampled Gaussian noise, shape (h, w), roughly unit variance."""
    small = rng.standard_normal(cells).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _background(name: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Textured HxWx3 float background: a base colour, a gradient, blotches, grain and streaks."""
    base, grad_amp, blot_amp, fine_amp, streak_amp = _BG_STYLE[name]
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    theta = rng.uniform(0.0, 2.0 * np.pi)
    grad = np.cos(theta) * xx + np.sin(theta) * yy
    if name == "sky":  # lighter towards the horizon
        grad = np.broadcast_to(yy, (h, w))
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = np.asarray(base, dtype=np.float32)
    img += (grad * grad_amp)[..., None]
    img += (_smooth_noise(w, h, (6, 6), rng) * blot_amp)[..., None]
    img += rng.standard_normal((h, w, 1)).astype(np.float32) * fine_amp
    if streak_amp:
        img += (_smooth_noise(w, h, (max(2, h // 12), w), rng) * streak_amp)[..., None]
    if name == "sky":  # soft whitish clouds
        clouds = np.clip(_smooth_noise(w, h, (4, 5), rng) - 0.6, 0.0, None) * 45.0
        img += clouds[..., None]
    return img


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Triangle / star vertices stretched to fill the pixel box [x1, x2-1] x [y1, y2-1] exactly."""
    if shape == "triangle":
        pts = np.array([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0]])
    else:
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    x1, y1, x2, y2 = box
    pts = pts * np.array([x2 - 1 - x1, y2 - 1 - y1]) + np.array([x1, y1])
    return [(float(x), float(y)) for x, y in pts]


def _draw(img: Image.Image, shape: str, colour: str, box: tuple[int, int, int, int]) -> None:
    draw = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    else:
        draw.polygon(_polygon(shape, box), fill=fill)


def _layout(w: int, h: int, max_objects: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Non-overlapping square boxes; the size cap shrinks with failed tries so crowded images still fit."""
    short = min(w, h)
    lo, hi = int(round(_MIN_FRAC * short)), int(_MAX_FRAC * short)
    target = int(rng.integers(1, max_objects + 1))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(target):
        for attempt in range(_PLACE_TRIES):
            cap = hi - (hi - lo) * attempt // _PLACE_TRIES
            s = int(rng.integers(lo, cap + 1))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if all(x + s + _GAP <= b[0] or b[2] + _GAP <= x or y + s + _GAP <= b[1] or b[3] + _GAP <= y
                   for b in boxes):
                boxes.append((x, y, x + s, y + s))
                break
    return boxes


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    """Karpathy split per image (index = image_id - 1): ~70% train, 5% restval, 15% val, 15% test."""
    n_val = n_test = int(round(0.15 * n))
    n_rest = int(round(0.05 * n))
    if n >= 4:
        n_val, n_test, n_rest = max(1, n_val), max(1, n_test), max(1, n_rest)
    labels = ["val"] * n_val + ["test"] * n_test + ["restval"] * n_rest
    labels += ["train"] * (n - len(labels))
    return [labels[int(i)] for i in rng.permutation(n)]


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")


def _image_rng(seed: int, image_id: int, stream: int) -> np.random.Generator:
    """Independent stream per (image, purpose): drawing noise never shifts captions or questions."""
    return np.random.default_rng([seed, image_id, stream])


def make_toy_world(root: str | Path, config: ToyConfig = ToyConfig()) -> dict:
    """Write images, ground truth, COCO captions, Karpathy split, VQA v2 and VG files under ``root``.

    Returns a summary: counts per split, numbers of objects / captions / questions and the written paths.
    """
    root = Path(root)
    colours = list(COLOURS)
    split_of = _splits(config.n_images, np.random.default_rng(config.seed))
    world: list[dict] = []
    karpathy: list[dict] = []
    coco: dict[str, dict] = {s: {"info": _INFO, "licenses": [], "images": [], "annotations": []}
                             for s in ("train2014", "val2014")}
    vqa_q: dict[str, list] = {"train2014": [], "val2014": []}
    vqa_a: dict[str, list] = {"train2014": [], "val2014": []}
    vg_images: list[dict] = []
    vg_objects: list[dict] = []
    vg_attrs: list[dict] = []
    object_id = 0
    for idx in range(config.n_images):
        image_id, split = idx + 1, split_of[idx]
        subset = "train2014" if split in ("train", "restval") else "val2014"
        file_name = f"COCO_{subset}_{image_id:012d}.jpg"
        lay_rng = _image_rng(config.seed, image_id, 0)
        w, h = (int(v) for v in lay_rng.integers(config.min_size, config.max_size + 1, size=2))
        background = BACKGROUNDS[int(lay_rng.integers(len(BACKGROUNDS)))]
        objects = []
        for box in _layout(w, h, config.max_objects, lay_rng):
            object_id += 1
            objects.append({"object_id": object_id, "shape": SHAPES[int(lay_rng.integers(len(SHAPES)))],
                            "colour": colours[int(lay_rng.integers(len(colours)))],
                            "box": [float(v) for v in box]})

        # pixels
        pix_rng = _image_rng(config.seed, image_id, 1)
        arr = np.clip(np.rint(_background(background, w, h, pix_rng)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        for o in objects:
            _draw(img, o["shape"], o["colour"], tuple(int(v) for v in o["box"]))
        path = root / subset / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg_bytes(np.asarray(img)))
        world.append({"image_id": image_id, "file_path": f"{subset}/{file_name}", "width": w, "height": h,
                      "background": background, "split": split, "objects": objects})

        # captions (COCO + Karpathy)
        views = [ToyObject(o["shape"], o["colour"], tuple(o["box"])) for o in objects]
        text_rng = _image_rng(config.seed, image_id, 2)
        captions = make_captions(views, background, w, text_rng)
        coco[subset]["images"].append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        sentences = []
        for k, raw in enumerate(captions):
            sentid = idx * len(captions) + k
            coco[subset]["annotations"].append({"id": sentid + 1, "image_id": image_id, "caption": raw})
            sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": idx, "sentid": sentid})
        karpathy.append({"filepath": subset, "filename": file_name, "imgid": idx, "cocoid": image_id,
                         "split": split, "sentids": [s["sentid"] for s in sentences], "sentences": sentences})

        # VQA v2
        qa_rng = _image_rng(config.seed, image_id, 3)
        for k, q in enumerate(make_questions(views, colours, list(SHAPES), qa_rng)):
            qid = image_id * 100 + k
            answers, mc = make_answers(q, colours, list(SHAPES), qa_rng, config.noise_answers)
            vqa_q[subset].append({"image_id": image_id, "question": q.question, "question_id": qid})
            vqa_a[subset].append({"question_id": qid, "image_id": image_id, "question_type": q.question_type,
                                  "answer_type": q.answer_type, "multiple_choice_answer": mc,
                                  "answers": answers})

        # Visual Genome
        vg_images.append({"image_id": image_id, "width": w, "height": h, "url": "", "coco_id": image_id})
        vg_objs = []
        for o in objects:
            x1, y1, x2, y2 = (int(v) for v in o["box"])
            vg_objs.append({"object_id": o["object_id"], "x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1,
                            "names": [o["shape"]]})
        vg_objects.append({"image_id": image_id, "objects": vg_objs})
        vg_attrs.append({"image_id": image_id, "attributes": [
            {**v, "attributes": [o["colour"]]} for v, o in zip(vg_objs, objects)]})

    files: dict[str, Path] = {"toy_world": root / "toy_world.json", "karpathy": root / "dataset_coco.json",
                              "vg_image_data": root / "vg" / "image_data.json",
                              "vg_objects": root / "vg" / "objects.json",
                              "vg_attributes": root / "vg" / "attributes.json"}
    _write_json(files["toy_world"], {"config": dataclasses.asdict(config), "colours": colours,
                                     "shapes": list(SHAPES), "images": world})
    _write_json(files["karpathy"], {"dataset": "coco", "images": karpathy})
    for subset in ("train2014", "val2014"):
        files[f"captions_{subset}"] = root / "annotations" / f"captions_{subset}.json"
        _write_json(files[f"captions_{subset}"], coco[subset])
        files[f"vqa_questions_{subset}"] = root / "vqa" / f"v2_OpenEnded_mscoco_{subset}_questions.json"
        _write_json(files[f"vqa_questions_{subset}"], {
            "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
            "data_subtype": subset, "questions": vqa_q[subset]})
        files[f"vqa_annotations_{subset}"] = root / "vqa" / f"v2_mscoco_{subset}_annotations.json"
        _write_json(files[f"vqa_annotations_{subset}"], {
            "info": {}, "license": {}, "data_subtype": subset, "annotations": vqa_a[subset]})
    _write_json(files["vg_image_data"], vg_images)
    _write_json(files["vg_objects"], vg_objects)
    _write_json(files["vg_attributes"], vg_attrs)
    files.update(write_truth_files(root, world, SHAPES, _INFO))  # instances + CHAIR words (CHAIR, grounding)

    split_counts = {s: split_of.count(s) for s in ("train", "restval", "val", "test")}
    return {"root": str(root), "n_images": config.n_images, "splits": split_counts,
            "n_objects": object_id, "n_captions": sum(len(k["sentences"]) for k in karpathy),
            "n_questions": sum(len(v) for v in vqa_q.values()),
            "files": {k: str(v) for k, v in files.items()}}
