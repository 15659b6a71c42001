"""Toy world details beyond test_toy_world.py: layout geometry, caption and question content, VG."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from butd.datasets.toy import BACKGROUNDS, COLOURS, SHAPES, ToyConfig, make_toy_world

_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


def _norm(ans: str) -> str:
    words = re.sub(r"[^\w\s]", "", ans.lower()).split()
    return " ".join(_WORDS.get(w, w) for w in words if w not in ("a", "an", "the"))


def _load(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_details")
    summary = make_toy_world(root, ToyConfig(n_images=60, seed=11))
    gt = _load(root / "toy_world.json")
    return root, summary, gt, {im["image_id"]: im for im in gt["images"]}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_config_is_validated():
    with pytest.raises(ValueError):
        ToyConfig(n_images=0)
    with pytest.raises(ValueError):
        ToyConfig(min_size=300, max_size=200)
    with pytest.raises(ValueError):
        ToyConfig(noise_answers=1.5)


def test_summary_and_ground_truth_header(toy):
    root, summary, gt, _ = toy
    assert summary["n_images"] == 60 and sum(summary["splits"].values()) == 60
    assert all(Path(p).is_file() for p in summary["files"].values())
    assert summary["n_objects"] == sum(len(im["objects"]) for im in gt["images"])
    assert gt["config"]["seed"] == 11 and gt["colours"] == list(COLOURS) and gt["shapes"] == list(SHAPES)
    assert [im["image_id"] for im in gt["images"]] == list(range(1, 61))
    assert {im["background"] for im in gt["images"]} <= set(BACKGROUNDS)
    ids = [o["object_id"] for im in gt["images"] for o in im["objects"]]
    assert len(ids) == len(set(ids))


def test_layout_geometry_and_drawn_pixels(toy):
    root, _, gt, _ = toy
    for im in gt["images"]:
        w, h = im["width"], im["height"]
        assert 160 <= w <= 320 and 160 <= h <= 320 and 1 <= len(im["objects"]) <= 4
        pixels = np.asarray(Image.open(root / im["file_path"]).convert("RGB"), dtype=np.int32)
        mask = np.ones((h, w), dtype=bool)
        for k, o in enumerate(im["objects"]):
            box = o["box"]
            side = box[2] - box[0]
            assert 0.19 * min(w, h) <= side <= 0.46 * min(w, h)
            assert all(_iou(box, other["box"]) < 0.1 for other in im["objects"][k + 1:])
            x1, y1, x2, y2 = (int(v) for v in box)
            mask[y1:y2, x1:x2] = False
            colour = np.array(COLOURS[o["colour"]])
            cy, cx = (y1 + y2) // 2, (x1 + x2) // 2  # every shape covers its box centre
            assert np.abs(pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0) - colour).max() < 40
            # tight box: the pixels of the object's colour reach every side (star tips are thin after JPEG)
            ys, xs = np.nonzero(np.abs(pixels[y1:y2, x1:x2] - colour).max(-1) < 60)
            extent = np.array([xs.min(), ys.min(), side - 1 - xs.max(), side - 1 - ys.max()])
            assert extent.max() <= max(4, 0.12 * side), (im["image_id"], o, extent)
        background = pixels[mask]
        assert background.std(0).max() > 2.0  # textured, not flat


def test_karpathy_layout_and_tokens(toy):
    root, _, gt, by_id = toy
    images = _load(root / "dataset_coco.json")["images"]
    assert Counter(im["split"] for im in images).keys() == {"train", "restval", "val", "test"}
    sentids = []
    for idx, im in enumerate(images):
        assert im["imgid"] == idx and by_id[im["cocoid"]]["split"] == im["split"]
        assert im["filepath"] == ("train2014" if im["split"] in ("train", "restval") else "val2014")
        assert im["filename"] == f"COCO_{im['filepath']}_{im['cocoid']:012d}.jpg"
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        assert len({s["raw"] for s in im["sentences"]}) == 5  # five distinct captions
        shapes = {o["shape"] for o in by_id[im["cocoid"]]["objects"]}
        for s in im["sentences"]:
            assert s["imgid"] == idx
            assert s["tokens"] == re.sub(r"[^\w\s]", "", s["raw"].lower()).split()
            assert 1 <= len(s["tokens"]) <= 16
            named = {t.rstrip("s") for t in s["tokens"]} & set(SHAPES)
            assert named <= shapes
        sentids += im["sentids"]
    assert len(sentids) == len(set(sentids))


def test_vqa_answers_match_ground_truth(toy):
    root, _, gt, by_id = toy
    yes_no = Counter()
    for split in ("train2014", "val2014"):
        qs = _load(root / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json")
        anns = _load(root / "vqa" / f"v2_mscoco_{split}_annotations.json")
        assert qs["data_subtype"] == anns["data_subtype"] == split and qs["task_type"] == "Open-Ended"
        per_image = Counter(q["image_id"] for q in qs["questions"])
        assert set(per_image.values()) <= {4, 5, 6}
        for q, a in zip(qs["questions"], anns["annotations"]):
            objs = by_id[q["image_id"]]["objects"]
            assert q["question_id"] // 100 == q["image_id"] == a["image_id"]
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert {x["answer_confidence"] for x in a["answers"]} <= {"yes", "maybe", "no"}
            votes = Counter(_norm(x["answer"]) for x in a["answers"])
            assert a["multiple_choice_answer"] == votes.most_common(1)[0][0]
            text = q["question"]
            if m := re.fullmatch(r"how many (\w+) shapes are there\?", text):
                truth = str(sum(o["colour"] == m[1] for o in objs))
            elif m := re.fullmatch(r"how many (\w+)s are there\?", text):
                truth = str(sum(o["shape"] == m[1] for o in objs) if m[1] != "shape" else len(objs))
            elif m := re.fullmatch(r"what color is the (\w+)\?", text):
                [truth] = [o["colour"] for o in objs if o["shape"] == m[1]]  # asked only when unique
            elif m := re.fullmatch(r"what shape is the (\w+) object\?", text):
                [truth] = [o["shape"] for o in objs if o["colour"] == m[1]]
            elif m := re.fullmatch(r"is there an? (\w+) (\w+)\?", text):
                truth = "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objs) else "no"
                yes_no[truth] += 1
            else:
                raise AssertionError(f"unexpected question {text!r}")
            kind = {"yes": "yes/no", "no": "yes/no"}.get(truth, "number" if truth.isdigit() else "other")
            assert a["answer_type"] == kind
            assert votes[truth] >= 6, (text, a["answers"])  # correct answer keeps the majority
    assert yes_no["yes"] == yes_no["no"] > 0


def test_vg_files_match_ground_truth(toy):
    root, _, gt, by_id = toy
    image_data = _load(root / "vg" / "image_data.json")
    assert [(e["image_id"], e["coco_id"], e["width"], e["height"]) for e in image_data] == [
        (im["image_id"], im["image_id"], im["width"], im["height"]) for im in gt["images"]]
    for entry in _load(root / "vg" / "attributes.json"):
        objs = by_id[entry["image_id"]]["objects"]
        assert [a["object_id"] for a in entry["attributes"]] == [o["object_id"] for o in objs]
        for a, o in zip(entry["attributes"], objs):
            assert a["names"] == [o["shape"]] and a["attributes"] == [o["colour"]]
            assert [a["x"], a["y"], a["x"] + a["w"], a["y"] + a["h"]] == o["box"]
