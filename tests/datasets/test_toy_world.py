"""The toy world: deterministic, consistent with its own ground truth, in the public layouts."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from butd.datasets.toy import COLOURS, ToyConfig, make_toy_world


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_toy_world(root, ToyConfig(n_images=40, seed=3))
    return root, json.loads((root / "toy_world.json").read_text())


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, world):
    root, _ = world
    make_toy_world(tmp_path / "again", ToyConfig(n_images=40, seed=3))
    assert _digests(tmp_path / "again") == _digests(root)
    make_toy_world(tmp_path / "other", ToyConfig(n_images=40, seed=4))
    other = _digests(tmp_path / "other")
    same = [k for k, v in _digests(root).items() if k.endswith(".jpg") and other.get(k) == v]
    assert not same


def test_images_match_their_ground_truth(world):
    root, gt = world
    assert len(gt["images"]) == 40
    for image in gt["images"]:
        with Image.open(root / image["file_path"]) as im:
            assert im.mode == "RGB" and im.size == (image["width"], image["height"])
            pixels = np.asarray(im, dtype=np.int32)
        assert 1 <= len(image["objects"])
        for obj in image["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= image["width"] and 0 <= y1 < y2 <= image["height"]
            if obj["shape"] in ("circle", "square"):  # the centre is inside the drawn shape
                cy, cx = int((y1 + y2) / 2), int((x1 + x2) / 2)
                patch = pixels[cy - 2:cy + 3, cx - 2:cx + 3].reshape(-1, 3).mean(0)
                assert np.abs(patch - np.array(COLOURS[obj["colour"]])).max() < 40, (image["image_id"], obj)


def test_karpathy_and_coco_captions_are_consistent(world):
    root, gt = world
    by_id = {im["image_id"]: im for im in gt["images"]}
    karpathy = json.loads((root / "dataset_coco.json").read_text())["images"]
    assert {im["split"] for im in karpathy} <= {"train", "restval", "val", "test"}
    assert {"train", "val", "test"} <= {im["split"] for im in karpathy}
    colours = set(COLOURS)
    for im in karpathy:
        assert len(im["sentences"]) == 5 and (root / im["filepath"] / im["filename"]).exists()
        present = {o["colour"] for o in by_id[im["cocoid"]]["objects"]}
        for s in im["sentences"]:
            assert s["tokens"] and all(t == t.lower() for t in s["tokens"])
            assert set(s["tokens"]) & colours <= present  # never a colour that is not in the image
    coco_ids = set()
    for split in ("train2014", "val2014"):
        coco = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
        files = {i["id"]: i["file_name"] for i in coco["images"]}
        assert all((root / split / f).exists() for f in files.values())
        assert Counter(a["image_id"] for a in coco["annotations"]) == dict.fromkeys(files, 5)
        coco_ids |= set(files)
    assert coco_ids == set(by_id)


def test_vqa_answers_follow_the_ground_truth(world):
    root, gt = world
    by_id = {im["image_id"]: im for im in gt["images"]}
    qids, correct, counting = set(), 0, 0
    for split in ("train2014", "val2014"):
        qs = json.loads((root / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
        anns = json.loads((root / "vqa" / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]
        assert [q["question_id"] for q in qs] == [a["question_id"] for a in anns]
        for q, a in zip(qs, anns):
            assert q["question_id"] not in qids
            qids.add(q["question_id"])
            assert by_id[q["image_id"]]["file_path"].startswith(split)
            assert len(a["answers"]) == 10 and a["answer_type"] in {"yes/no", "number", "other"}
            if q["question"] == "how many shapes are there?":
                counting += 1
                truth = str(len(by_id[q["image_id"]]["objects"]))
                correct += Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0] == truth
    assert counting >= 10 and correct == counting


def test_vg_objects_match_the_ground_truth(world):
    root, gt = world
    objects = {e["image_id"]: e["objects"] for e in json.loads((root / "vg" / "objects.json").read_text())}
    attrs = {e["image_id"]: e["attributes"] for e in json.loads((root / "vg" / "attributes.json").read_text())}
    for image in gt["images"]:
        vg = objects[image["image_id"]]
        assert len(vg) == len(image["objects"])
        for o, v, a in zip(image["objects"], vg, attrs[image["image_id"]]):
            x1, y1, x2, y2 = o["box"]
            assert (v["x"], v["y"], v["w"], v["h"]) == (round(x1), round(y1), round(x2 - x1), round(y2 - y1))
            assert v["names"] == [o["shape"]] and a["attributes"] == [o["colour"]]
