"""The toy world writes COCO instance files and its CHAIR word list; CHAIR and grounding read them unchanged."""

import json

import pytest

from butd.datasets.toy import SHAPES, ToyConfig, make_toy_world
from butd.evaluate.chair import chair, ground_truth_objects, load_chair_words, load_instances


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_truth")
    summary = make_toy_world(root, ToyConfig(n_images=30, seed=2))
    return root, summary, json.loads((root / "toy_world.json").read_text())


def test_instances_hold_every_object_with_its_box(world):
    root, summary, gt = world
    files = [root / "annotations" / f"instances_{s}2014.json" for s in ("train", "val")]
    assert {summary["files"]["instances_train2014"], summary["files"]["instances_val2014"]} == set(map(str, files))
    inst = load_instances(files)
    for image in gt["images"]:
        expected = sorted((o["shape"], tuple(o["box"])) for o in image["objects"])
        assert sorted(inst[str(image["image_id"])]) == expected
    data = json.loads(files[1].read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPES)
    assert {im["id"] for im in data["images"]} == {im["image_id"] for im in gt["images"]
                                                    if im["file_path"].startswith("val2014/")}


def test_chair_on_the_toy_world(world):
    root, summary, gt = world
    words = load_chair_words(summary["files"]["chair_words"])
    assert words.objects == tuple(SHAPES)
    inst = load_instances([root / "annotations" / f"instances_{s}2014.json" for s in ("train", "val")])
    karpathy = json.loads((root / "dataset_coco.json").read_text())["images"]
    refs = {str(im["cocoid"]): [s["raw"] for s in im["sentences"]] for im in karpathy}
    truth = ground_truth_objects(refs, inst, refs, words)
    assert all(truth[str(im["image_id"])] == {o["shape"] for o in im["objects"]} for im in gt["images"])
    first = {k: v[0] for k, v in refs.items()}
    assert chair(first, truth, words)["CHAIR_s"] == 0.0  # references never hallucinate
    image = gt["images"][0]
    absent = next(s for s in SHAPES if s not in truth[str(image["image_id"])])
    res = chair({str(image["image_id"]): f"two {absent}s on the grass"}, truth, words)
    assert res["CHAIR_s"] == 1.0 and res["per_caption"][str(image["image_id"])]["hallucinated"] == [f"{absent}s"]
