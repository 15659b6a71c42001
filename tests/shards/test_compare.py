"""`butd shards compare A B`: identity with itself, exactly the boxes and features that differ, one-line refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from store_helpers import region_record

from butd.shards import FeatureStore, ShardWriter, scalar
from butd.shards.compare import compare_records, compare_stores, match_boxes

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _butd(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "butd", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def _write(path, recs, kind="region"):
    with ShardWriter(path, kind) as w:
        for k, rec in recs.items():
            w.add(k, rec)
    return path


def _labelled(rng, k):
    rec = region_record(rng, k=k, dim=16, labels=True)
    rec["boxes"][:, 2:] = rec["boxes"][:, :2] + 20 + rec["boxes"][:, 2:]  # proper x1 < x2, y1 < y2 boxes
    rec["attrs_id"] = rng.integers(0, 400, k).astype(np.int64)
    return rec


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A store, and a copy in which image 'img02' has box 3 moved, 'img05' has the feature of box 1 scaled
    by 1.01, and 'img04' has its boxes in another order (otherwise equal)."""
    d = tmp_path_factory.mktemp("cmp")
    rng = np.random.default_rng(0)
    recs = {f"img{i:02d}": _labelled(rng, int(rng.integers(5, 12))) for i in range(8)}
    copy = {k: {f: np.array(v) for f, v in rec.items()} for k, rec in recs.items()}
    copy["img02"]["boxes"][3] += np.float32(4.0)
    copy["img05"]["features"][1] *= np.float32(1.01)
    order = np.random.default_rng(1).permutation(len(copy["img04"]["boxes"]))
    copy["img04"] = {f: (v[order] if v.ndim else v) for f, v in copy["img04"].items()}
    return _write(d / "a", recs), _write(d / "b", copy), recs


def test_a_store_compared_with_itself_is_identical(stores):
    a, _, recs = stores
    res = compare_stores(a, a)
    s = res["summary"]
    assert res["images"] == [] and s["ok"] and s["identical"] == s["compared"] == len(recs)
    assert s["min_iou"] == 1.0 and s["max_feature_diff"] == 0.0 and s["objects_agree"] == 1.0
    r = _butd("shards", "compare", a, a)
    assert r.returncode == 0, r.stderr
    assert f"{len(recs)} image(s) compared, {len(recs)} identical" in r.stdout and "IDENTICAL" in r.stdout


def test_the_moved_box_and_the_perturbed_feature_are_named_exactly(stores):
    a, b, recs = stores
    res = compare_stores(b, a)  # B's copy against the original as reference
    by_id = {img["image_id"]: img for img in res["images"]}
    assert set(by_id) == {"img02", "img05"}  # the reordered image matches one to one: identical
    moved = by_id["img02"]
    assert [m[:2] for m in moved["moved"]] == [[3, 3]] and moved["changed"] == [] and moved["relabelled"] == []
    assert 0.3 < moved["moved"][0][2] < 1.0 and moved["min_iou"] == pytest.approx(moved["moved"][0][2], abs=1e-6)
    changed = by_id["img05"]
    assert changed["moved"] == [] and [c[:2] for c in changed["changed"]] == [[1, 1]]
    feat = recs["img05"]["features"][1].astype(np.float64)
    expected = np.abs(np.float32(1.01) * recs["img05"]["features"][1] - feat).max() / np.abs(feat).max()
    assert changed["changed"][0][2] == pytest.approx(expected, rel=1e-6)
    assert not res["summary"]["ok"] and res["summary"]["n_outside_tolerance"] == 2
    loose = compare_stores(b, a, tolerance=0.02, min_iou=0.3)["summary"]
    assert loose["ok"] and loose["identical"] == len(recs) - 2

    r = _butd("shards", "compare", b, a)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("img02: rows ") and "moved A3->B3" in lines[0]
    assert lines[1].startswith("img05: ") and "features A1->B1" in lines[1] and lines[-1].startswith("DIFFER: 2 ")
    r = _butd("shards", "compare", "--json", "--tolerance", "0.02", "--min-iou", "0.3", b, a)
    assert r.returncode == 0 and json.loads(r.stdout)["summary"]["ok"]


def test_reordered_boxes_are_matched_one_to_one(stores):
    a, b, _ = stores
    ra, rb = FeatureStore(b)["img04"], FeatureStore(a)["img04"]
    cmp = compare_records("img04", ra, rb)
    assert cmp.identical and cmp.matched == len(ra["boxes"])
    np.testing.assert_array_equal(np.asarray(ra["boxes"]), np.asarray(rb["boxes"])[cmp.match])
    # boxes with identical coordinates are told apart by their features
    boxes = np.tile(np.array([[5, 5, 9, 9]], np.float32), (3, 1))
    feats = np.eye(3, dtype=np.float32)
    rows, cols = match_boxes(boxes, feats[[2, 0, 1]], boxes, feats)
    assert cols.tolist() == [2, 0, 1]


def test_missing_images_count_and_box_count_mismatch(tmp_path):
    rng = np.random.default_rng(3)
    base = {f"i{k}": _labelled(rng, 6) for k in range(3)}
    fewer = {"i0": base["i0"], "i1": {**base["i1"], **{f: base["i1"][f][:4] for f in
                                                           ("boxes", "features", "objects_id", "objects_conf",
                                                            "attrs_id")}, "num_boxes": scalar(4)}}
    res = compare_stores(_write(tmp_path / "f", fewer), _write(tmp_path / "b", base))
    s = res["summary"]
    assert s["compared"] == 2 and s["n_only_b"] == 1 and s["only_b"] == ["i2"] and s["count_mismatch"] == 1
    assert not s["ok"] and [i["image_id"] for i in res["images"]] == ["i1"] and res["images"][0]["matched"] == 4


def _grid(rng, h, w, dim=8):
    return {"features": rng.standard_normal((h * w, dim)).astype(np.float32), "grid_h": scalar(h),
            "grid_w": scalar(w), "image_w": scalar(64), "image_h": scalar(48)}


def test_grid_stores_compare_cell_by_cell_and_kinds_do_not_mix(tmp_path, stores):
    rng = np.random.default_rng(4)
    g = {"x": _grid(rng, 3, 3), "y": _grid(rng, 3, 3)}
    g2 = {"x": {**g["x"], "features": g["x"]["features"].copy()}, "y": _grid(rng, 2, 2)}
    g2["x"]["features"][4, 0] += 1.0
    res = compare_stores(_write(tmp_path / "g2", g2, "grid"), _write(tmp_path / "g", g, "grid"))
    by_id = {i["image_id"]: i for i in res["images"]}
    assert [c[:2] for c in by_id["x"]["changed"]] == [[4, 4]] and by_id["x"]["min_iou"] is None
    assert by_id["y"]["problem"] == "grid 2x2 vs 3x3"
    r = _butd("shards", "compare", stores[0], tmp_path / "g")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"Error: cannot compare a region store with a grid store ({stores[0]} vs {tmp_path / 'g'}): "
        "compare region stores with region stores and grid stores with grid stores"]
    r = _butd("shards", "compare", tmp_path / "nowhere", tmp_path / "g")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot open store A" in r.stderr
