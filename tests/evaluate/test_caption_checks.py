"""The caption eval's extra steps: files found beside the captions, CHAIR skipped with a reason, grounding."""

import json

import numpy as np
import pytest

from butd.datasets.toy import ToyConfig, make_toy_world
from butd.errors import UserError
from butd.evaluate.caption_checks import caption_checks, grounding_report, hallucination_inputs


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    make_toy_world(root, ToyConfig(n_images=12, seed=4))
    world = json.loads((root / "toy_world.json").read_text())
    return root, {str(im["image_id"]): im for im in world["images"]}


def test_files_beside_the_captions_are_found_and_chair_runs(toy):
    root, images = toy
    inputs = hallucination_inputs(root / "dataset_coco.json")
    assert inputs.words.objects == ("circle", "square", "triangle", "star") and len(inputs.instance_files) == 2
    one = next(iter(images.values()))
    key = str(one["image_id"])
    present = {o["shape"] for o in one["objects"]}
    absent = next(s for s in inputs.words.objects if s not in present)
    preds = {key: f"a {one['objects'][0]['shape']} and a {absent} and a {absent}"}
    metrics, skipped, hall = caption_checks(preds, {key: []}, ["a red circle"], allowed_repeats=("a", "and"),
                                            inputs=inputs)
    assert skipped == {} and hall == {key: [absent, absent]}
    assert metrics["chair"]["CHAIR_s"] == 1.0 and metrics["chair"]["CHAIR_i"] == pytest.approx(2 / 3)
    assert metrics["diagnostics"]["repeat"] == 1.0
    metrics, skipped, hall = caption_checks(preds, {key: []}, None, allowed_repeats=(), inputs=None)
    assert "chair" not in metrics and skipped["CHAIR"].startswith("CHAIR skipped: no instance annotations")
    with pytest.raises(UserError, match="not a CHAIR word file"):
        hallucination_inputs(root / "dataset_coco.json", chair_words=root / "toy_world.json")
    with pytest.raises(UserError, match="not a COCO instances file"):
        hallucination_inputs(root / "dataset_coco.json", [root / "annotations" / "captions_val2014.json"])


def test_grounding_report_over_store_records(toy):
    root, images = toy
    inputs = hallucination_inputs(root / "dataset_coco.json")
    im = next(v for v in images.values() if len(v["objects"]) >= 2)
    key = str(im["image_id"])
    boxes = np.array([o["box"] for o in im["objects"]] + [[0, 0, im["width"], im["height"]]], np.float32)
    rec = {"boxes": boxes, "features": np.zeros((len(boxes), 4), np.float32)}
    words = ["a", im["objects"][0]["shape"], "and", "a", im["objects"][1]["shape"]]
    att = np.full((5, len(boxes)), 1.0 / len(boxes))
    att[1] = np.eye(len(boxes))[0] * 0.9 + 0.1 / len(boxes)  # on the first object
    att[4] = np.eye(len(boxes))[-1] * 0.9 + 0.1 / len(boxes)  # on the whole-image box: wrong
    summary, per_image = grounding_report({key: words}, {key: att}, {key: rec}, inputs, k=2)
    assert summary["grounded_mentions"] == 2 and summary["grounding_accuracy"] == 0.5 and summary["top_k"] == 2
    w = per_image[key]["words"]
    assert w[1]["grounded"] is True and w[4]["grounded"] is False and len(w[0]["top"]) == 2
    with pytest.raises(UserError, match="no boxes"):
        grounding_report({key: words}, {key: att}, {key: {"features": rec["features"]}}, inputs)
