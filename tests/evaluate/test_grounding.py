"""Per-word grounding: attention mass inside the ground truth (Liu et al. 2017) equals a pixel count, the
top-attended box decides grounding accuracy, and records without boxes or bad box files fail in one line."""

import json

import numpy as np
import pytest

from butd.errors import UserError
from butd.evaluate.chair import load_chair_words
from butd.evaluate.grounding import (
    baseline_attention,
    cell_boxes,
    ground_caption,
    grounding_summary,
    load_box_file,
    mass_inside,
    record_boxes,
    top_regions,
)
from butd.shards.compare import pair_iou


def _raster_mass(boxes, weights, region, w, h):
    """Independent reference: spread each box's weight over its pixels, count the mass on region pixels."""
    inside = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in region:
        inside[y1:y2, x1:x2] = True
    weights = np.asarray(weights, float) / np.sum(weights)
    total = 0.0
    for (x1, y1, x2, y2), wi in zip(boxes, weights):
        cells = inside[y1:y2, x1:x2]
        if cells.size:
            total += wi * cells.sum() / cells.size
    return total


def test_mass_inside_equals_a_pixel_count_on_integer_boxes():
    rng = np.random.default_rng(0)
    w, h = 40, 30

    def boxes(n):
        xy = rng.integers(0, [w - 2, h - 2], (n, 2))
        wh = rng.integers(1, 20, (n, 2))
        return np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)

    for _ in range(50):
        b, region = boxes(int(rng.integers(1, 8))), boxes(int(rng.integers(1, 4)))  # overlapping GT boxes too
        weights = rng.random(len(b))
        assert mass_inside(b, weights, region) == pytest.approx(_raster_mass(b, weights, region, w, h), abs=1e-12)


def test_grid_attention_is_the_papers_upsampled_map():
    cells = cell_boxes(2, 2, 100, 60)
    assert cells.tolist() == [[0, 0, 50, 30], [50, 0, 100, 30], [0, 30, 50, 60], [50, 30, 100, 60]]
    left_half = np.array([[0, 0, 50, 60]])
    assert mass_inside(cells, np.full(4, 0.25), left_half) == pytest.approx(0.5)
    assert mass_inside(cells, np.array([1.0, 0, 0, 0]), left_half) == pytest.approx(1.0)
    assert mass_inside(cells, np.array([0, 1.0, 0, 0]), np.array([[25, 0, 75, 30]])) == pytest.approx(0.5)
    rec = {"grid_h": np.int32(2), "grid_w": np.int32(2), "image_w": np.int32(100), "image_h": np.int32(60)}
    np.testing.assert_array_equal(record_boxes(rec, 4), cells)


def test_iou_and_top_regions():
    assert pair_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])).tolist() == [[1 / 3, 0.0]]
    boxes = np.array([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], float)
    top = top_regions(np.array([0.2, 0.5, 0.3]), boxes, ("red circle", "", "obj 3"), k=2)
    assert top == [{"region": 1, "box": [1.0, 1.0, 2.0, 2.0], "weight": 0.5},
                   {"region": 2, "box": [2.0, 2.0, 3.0, 3.0], "weight": 0.3, "name": "obj 3"}]


def test_a_caption_is_grounded_word_by_word():
    words = load_chair_words()
    boxes = np.array([[0, 0, 40, 40], [50, 50, 90, 90], [0, 50, 40, 90]], float)
    truth = [("dog", (0, 0, 40, 40)), ("cat", (50, 50, 90, 90)), ("cat", (0, 50, 40, 90))]
    caption = ["a", "dog", "and", "two", "cats", "with", "a", "teddy", "bear"]
    att = np.full((len(caption), 3), 1 / 3)
    att[1] = [0.8, 0.1, 0.1]  # "dog": on the dog
    att[4] = [0.7, 0.2, 0.1]  # "cats": mostly on the dog
    att[8] = [0.1, 0.1, 0.8]  # "bear" ends "teddy bear": no teddy bear in the truth
    out = ground_caption(caption, att, boxes, words, truth, labels=("brown dog", "cat", ""), k=2)
    assert [w["word"] for w in out] == caption and all(len(w["top"]) == 2 for w in out)
    assert out[1]["object"] == "dog" and out[1]["grounded"] is True and out[1]["correctness"] == pytest.approx(0.8)
    assert out[1]["top"][0] == {"region": 0, "box": [0.0, 0.0, 40.0, 40.0], "weight": 0.8, "name": "brown dog"}
    assert out[4]["object"] == "cat" and out[4]["grounded"] is False and out[4]["correctness"] == pytest.approx(0.3)
    assert out[8]["object"] == "teddy bear" and "grounded" not in out[8] and "object" not in out[7]
    s = grounding_summary({"img": out})
    assert s == {"grounding_accuracy": 0.5, "attention_correctness": pytest.approx(0.55), "grounded_mentions": 2}
    assert grounding_summary({"img": out[:1]})["grounding_accuracy"] is None


def test_records_without_boxes_and_bad_box_files_fail_in_one_line(tmp_path):
    with pytest.raises(UserError, match="the feature store has no boxes") as e:
        record_boxes({"features": np.zeros((3, 4)), "num_boxes": np.int32(3)}, 3)
    assert e.value.usage and "\n" not in e.value.line()
    with pytest.raises(UserError, match="boxes are all empty"):
        record_boxes({"boxes": np.zeros((3, 4), np.float32), "features": np.zeros((3, 4))}, 3)
    words = load_chair_words()
    good = tmp_path / "boxes.json"
    good.write_text(json.dumps({"format": "butd-grounding-boxes",
                                "images": {"7": [{"name": "puppy", "box": [1, 2, 3, 4]}]}}))
    assert load_box_file(good, words) == {"7": [("dog", (1.0, 2.0, 3.0, 4.0))]}
    head = '{"format": "butd-grounding-boxes", "images": {"7": '
    for content, msg in [("[]", "not a grounding box file"),
                         (head + '[{"box": [1]}]}}', "broken box entry"),
                         (head + '[{"name": "dog", "box": [1, 2]}]}}', "broken box entry"),
                         (head + '[{"name": "castle", "box": [1, 2, 3, 4]}]}}',
                          "box name 'castle' is not in the CHAIR word list")]:
        good.write_text(content)
        with pytest.raises(UserError, match=msg):
            load_box_file(good, words)


def test_baselines_keep_the_mass_and_lose_the_place():
    rng = np.random.default_rng(0)
    att = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    uni = baseline_attention(att, "uniform", rng)
    assert np.allclose(uni, 1 / 3)
    shuf = baseline_attention(att, "shuffled", rng)
    assert np.allclose(np.sort(shuf, 1), np.sort(att, 1)) and shuf.shape == att.shape
    with pytest.raises(ValueError):
        baseline_attention(att, "nope", rng)
