"""Dataset adapters on the toy world (COCO / VQA / VG / toy layouts), Flickr layouts, folders, box files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from butd.extract.sources import iter_source, load_boxes, with_boxes


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from butd.datasets.toy import ToyConfig, make_toy_world

    root = tmp_path_factory.mktemp("toy")
    make_toy_world(root, ToyConfig(n_images=5, seed=3))
    return root


def test_coco_vqa_toy_agree(toy: Path) -> None:
    world = json.loads((toy / "toy_world.json").read_text())["images"]
    want = {str(i["image_id"]): str(toy / i["file_path"]) for i in world}
    for ds in ("coco", "vqa", "toy"):
        got = {it.image_id: it.path for it in iter_source(ds, toy)}
        assert got == want, ds
        assert all(Path(p).is_file() for p in got.values())
    assert all(it.boxes is None for it in iter_source("toy", toy, mode="grid"))
    boxed = {it.image_id: it.boxes for it in iter_source("toy", toy, mode="boxes")}
    first = world[0]
    np.testing.assert_array_equal(boxed[str(first["image_id"])], [o["box"] for o in first["objects"]])


def test_vg_layout(toy: Path, tmp_path: Path) -> None:
    root = tmp_path / "vgroot"
    shutil.copytree(toy / "vg", root)
    (root / "VG_100K").mkdir()
    (root / "VG_100K_2").mkdir()
    for i, it in enumerate(iter_source("toy", toy)):
        shutil.copy(it.path, root / ("VG_100K" if i % 2 else "VG_100K_2") / f"{it.image_id}.jpg")
    items = list(iter_source("vg", root, mode="boxes"))
    assert len(items) == 5 and all(Path(it.path).is_file() for it in items)
    objs = {str(e["image_id"]): e["objects"] for e in json.loads((root / "objects.json").read_text())}
    o = objs[items[0].image_id][0]
    assert items[0].boxes[0].tolist() == [o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"]]
    assert all(it.boxes is None for it in iter_source("vg", root))


@pytest.mark.parametrize("dataset,folder",
                         [("flickr8k", "Flicker8k_Dataset"), ("flickr30k", "flickr30k-images")])
def test_flickr_layouts(tmp_path: Path, dataset: str, folder: str) -> None:
    (tmp_path / folder).mkdir()
    names = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    for n in names:
        (tmp_path / folder / n).write_bytes(b"x")
    images = [{"filename": n, "split": "train", "sentences": []} for n in names]
    karpathy = {"dataset": dataset, "images": images}
    (tmp_path / f"dataset_{dataset}.json").write_text(json.dumps(karpathy))
    items = list(iter_source(dataset, tmp_path))
    assert [it.image_id for it in items] == [Path(n).stem for n in names]
    assert all(Path(it.path).is_file() for it in items)


def test_folder_ids_and_user_boxes(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("x.JPG", "a/y.png", "a/b/z.jpeg", "a/notes.txt"):
        (tmp_path / rel).write_bytes(b"")
    items = list(iter_source("folder", tmp_path))
    assert [it.image_id for it in items] == ["a/b/z", "a/y", "x"]
    (tmp_path / "boxes.json").write_text(json.dumps({"x": [[1, 2, 3, 4]], "a/y": []}))
    boxes = load_boxes(tmp_path / "boxes.json")
    got = {it.image_id: it.boxes for it in with_boxes(iter(items), boxes)}
    assert got["a/b/z"] is None and got["a/y"].shape == (0, 4) and got["x"].dtype == np.float32
    (tmp_path / "bad.json").write_text(json.dumps({"x": [[5, 5, 1, 1]]}))
    with pytest.raises(ValueError):
        load_boxes(tmp_path / "bad.json")
    with pytest.raises(ValueError):
        list(iter_source("imagenet", tmp_path))
