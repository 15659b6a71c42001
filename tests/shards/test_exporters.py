"""`butd shards export`: every layout is read by a reader written as its peer's loader reads it, round-trips
through butd's importer bit-exact where the layout holds the data, and refuses what it cannot hold."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from legacy_format_writers import random_images
from peer_readers import read_hh_h5, read_lxmert_tsv, read_npz_dir, read_pa_tsv, read_rl_dirs
from store_helpers import assert_records_equal

from butd.errors import UserError
from butd.shards import FeatureStore, ShardWriter, scalar
from butd.shards.exporters import EXPORT_FORMATS, export_store
from butd.shards.exporters.hh_h5 import spatial_features
from butd.shards.importers import import_files

LABELS = ("objects_id", "objects_conf", "attrs_id", "attrs_conf")
BASE = ("boxes", "features", "num_boxes", "image_w", "image_h")


def write_store(path, images: dict[str, dict], *, labels=True, dtype="float32", max_records=4):
    with ShardWriter(path, "region", max_records=max_records) as w:
        for image_id, img in images.items():
            rec = {"boxes": img["boxes"], "features": img["features"].astype(dtype),
                   "num_boxes": scalar(len(img["boxes"])), "image_w": scalar(img["image_w"]),
                   "image_h": scalar(img["image_h"])}
            if labels:
                rec.update({k: img[k] for k in LABELS})
            w.add(image_id, rec)
    return path


def grid_store(path, n=3, h=2, w=3, dim=8):
    rng = np.random.default_rng(3)
    with ShardWriter(path, "grid") as wr:
        for i in range(n):
            wr.add(str(10 + i), {"features": rng.standard_normal((h * w, dim)).astype(np.float32),
                                 "grid_h": scalar(h), "grid_w": scalar(w), "image_w": scalar(64),
                                 "image_h": scalar(48)})
    return path


def subset(rec: dict, names) -> dict:
    return {k: rec[k] for k in names if k in rec}


@pytest.fixture
def variable(tmp_path):
    """10..40 boxes per image, with labels; ids are COCO-like numbers."""
    images = random_images(7, dim=16, boxes=(10, 40), seed=1, with_labels=True)
    return write_store(tmp_path / "var", images), images


@pytest.fixture
def fixed(tmp_path):
    images = random_images(6, dim=16, boxes=(36, 36), seed=2, with_labels=True)
    return write_store(tmp_path / "fixed", images), images


def test_every_export_format_is_registered_with_its_facts():
    assert set(EXPORT_FORMATS.names()) == {"pa-tsv", "lxmert-tsv", "hh-h5", "npz-dir", "rl-dirs"}
    for name in EXPORT_FORMATS.names():
        info = EXPORT_FORMATS.entry(name).info
        assert callable(EXPORT_FORMATS.builder(name)) and {"kinds", "fixed", "labels", "keeps", "ids"} <= set(info)


def test_pa_tsv_reads_as_generate_tsv_wrote_it_and_round_trips(variable, tmp_path):
    store, images = variable
    s = export_store("pa-tsv", store, tmp_path / "f.tsv", progress=False)
    assert s.records == 7 and set(s.dropped) == set(LABELS)
    raw = (tmp_path / "f.tsv").read_bytes()
    assert raw.count(b"\r\n") == 7 and raw.count(b"\n") == 7  # csv.DictWriter's line ends, one row per image
    peer = read_pa_tsv(tmp_path / "f.tsv")
    assert list(peer) == FeatureStore(store).image_ids()
    for image_id, img in images.items():
        got = peer[image_id]
        assert (got["image_w"], got["image_h"], got["num_boxes"]) == (img["image_w"], img["image_h"], len(img["boxes"]))
        assert got["boxes"].tobytes() == img["boxes"].tobytes()
        assert got["features"].tobytes() == img["features"].tobytes()
    import_files("pa-tsv", [tmp_path / "f.tsv"], tmp_path / "back", progress=False)
    src, back = FeatureStore(store), FeatureStore(tmp_path / "back")
    for image_id in src.image_ids():
        assert_records_equal(back[image_id], subset(src[image_id], BASE))


def test_lxmert_tsv_carries_labels_and_round_trips_bit_exact(fixed, tmp_path):
    store, images = fixed
    s = export_store("lxmert-tsv", store, tmp_path / "val2014_obj36.tsv", progress=False)
    assert s.dropped == () and s.padded == s.cut == 0
    peer = read_lxmert_tsv(tmp_path / "val2014_obj36.tsv")
    for image_id, img in images.items():
        got = peer[image_id]
        assert (got["img_h"], got["img_w"], got["num_boxes"]) == (img["image_h"], img["image_w"], 36)
        for k in ("boxes", "features", *LABELS):
            assert got[k].dtype == img[k].dtype and got[k].tobytes() == img[k].tobytes(), k
    import_files("lxmert-tsv", [tmp_path / "val2014_obj36.tsv"], tmp_path / "back", progress=False)
    src, back = FeatureStore(store), FeatureStore(tmp_path / "back")
    for image_id in src.image_ids():
        assert_records_equal(back[image_id], src[image_id])


def test_hh_h5_opens_as_vqa_feature_dataset_opens_it(fixed, tmp_path):
    store, images = fixed
    s = export_store("hh-h5", store, tmp_path / "val36.hdf5", progress=False)
    assert [p.name for p in s.outputs] == ["val36.ids.json", "val36_imgid2idx.pkl", "val36.hdf5"]
    peer = read_hh_h5(tmp_path, "val")
    assert sorted(peer) == sorted(int(i) for i in images)
    for image_id, img in images.items():
        got = peer[int(image_id)]
        assert got["features"].tobytes() == img["features"].tobytes()
        assert got["boxes"].tobytes() == img["boxes"].tobytes()
        spat = got["spatials"]  # [x1/W, y1/H, x2/W, y2/H, w/W, h/H], float32 as the converter computes it
        assert spat.dtype == np.float32 and np.allclose(spat[:, 4], (img["boxes"][:, 2] - img["boxes"][:, 0])
                                                        / img["image_w"], rtol=1e-6)
        assert spat.tobytes() == spatial_features(img["boxes"], img["image_w"], img["image_h"]).tobytes()
    # butd reads it back without any pickle (the JSON index), image sizes recovered exactly
    import_files("hh-h5", [tmp_path / "val36.hdf5"], tmp_path / "back", progress=False)
    src, back = FeatureStore(store), FeatureStore(tmp_path / "back")
    for image_id in src.image_ids():
        assert_records_equal(back[image_id], subset(src[image_id], BASE))
    # and through the loader's own pickle only with --allow-pickle
    (tmp_path / "val36.ids.json").unlink()
    with pytest.raises(Exception, match="--allow-pickle"):
        import_files("hh-h5", [tmp_path / "val36.hdf5"], tmp_path / "back2", progress=False)
    import_files("hh-h5", [tmp_path / "val36.hdf5"], tmp_path / "back2", allow_pickle=True, progress=False)
    assert len(FeatureStore(tmp_path / "back2")) == 6


def test_the_pickled_index_is_a_plain_dict_of_ints(fixed, tmp_path):
    store, _ = fixed
    export_store("hh-h5", store, tmp_path / "train36.hdf5", progress=False)
    raw = (tmp_path / "train36_imgid2idx.pkl").read_bytes()
    ops = {op.name for op, _, _ in __import__("pickletools").genops(raw)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ"}  # no code, no classes
    assert pickle.loads(raw) == {int(i): r for i, r in
                                 json.loads((tmp_path / "train36.ids.json").read_text()).items()}


def test_npz_dir_opens_without_pickles_and_round_trips(variable, tmp_path):
    store, images = variable
    s = export_store("npz-dir", store, tmp_path / "npz", progress=False)
    assert set(s.dropped) == set(LABELS)
    peer = read_npz_dir(tmp_path / "npz")
    assert sorted(peer) == sorted(images)
    for image_id, img in images.items():
        z = peer[image_id]
        assert set(z) == {"x", "bbox", "num_bbox", "image_h", "image_w"}  # extract_utils.save_roi_features, no info
        assert z["x"].tobytes() == img["features"].tobytes() and z["bbox"].tobytes() == img["boxes"].tobytes()
        assert (int(z["num_bbox"]), int(z["image_h"]), int(z["image_w"])) == (len(img["boxes"]), img["image_h"],
                                                                              img["image_w"])
        assert z["num_bbox"].dtype == np.int64 and z["num_bbox"].shape == ()
    import_files("npz-dir", [tmp_path / "npz"], tmp_path / "back", progress=False)
    src, back = FeatureStore(store), FeatureStore(tmp_path / "back")
    for image_id in src.image_ids():
        assert_records_equal(back[image_id], subset(src[image_id], BASE))


def test_rl_dirs_as_make_bu_data_writes_them_regions_and_grids(variable, tmp_path):
    store, images = variable
    s = export_store("rl-dirs", store, tmp_path / "cocobu", progress=False)
    assert [p.name for p in s.outputs] == ["cocobu_box", "cocobu_fc", "cocobu_att"]
    assert {"image_w", "image_h"} <= set(s.dropped)
    peer = read_rl_dirs(tmp_path / "cocobu", list(images))
    for image_id, img in images.items():
        got = peer[image_id]
        assert got["att"].tobytes() == img["features"].tobytes() and got["box"].tobytes() == img["boxes"].tobytes()
        assert got["fc"].dtype == np.float32 and got["fc"].tobytes() == img["features"].mean(0).tobytes()
    grid = grid_store(tmp_path / "grid")
    s = export_store("rl-dirs", grid, tmp_path / "cocores", progress=False)
    assert [p.name for p in s.outputs] == ["cocores_fc", "cocores_att"]
    peer = read_rl_dirs(tmp_path / "cocores", ["10", "11", "12"], boxes=False)
    for image_id, rec in FeatureStore(grid).items():
        assert peer[image_id]["att"].shape == (2, 3, 8)  # (att_size, att_size, D) as prepro_feats.py
        assert peer[image_id]["att_rows"].tobytes() == rec["features"].tobytes()  # the loader's reshape(-1, D)


def test_top_k_keeps_the_most_confident_and_pad_fills_with_zeros(variable, tmp_path):
    store, images = variable
    s = export_store("hh-h5", store, tmp_path / "t36.hdf5", top=36, pad=True, progress=False)
    counts = [len(img["boxes"]) for img in images.values()]
    assert s.cut == sum(c > 36 for c in counts) > 0 and s.padded == sum(c < 36 for c in counts) > 0
    peer = read_hh_h5(tmp_path, "t")
    for image_id, img in images.items():
        k = len(img["boxes"])
        keep = np.sort(np.argsort(-img["objects_conf"], kind="stable")[:36])
        got = peer[int(image_id)]
        assert got["features"].shape == (36, 16)
        assert got["features"][: min(k, 36)].tobytes() == img["features"][keep].tobytes()
        assert not got["features"][k:].any() and not got["boxes"][k:].any()


def test_float16_features_are_widened_exactly(tmp_path):
    images = random_images(3, dim=8, boxes=(5, 9), seed=4)
    store = write_store(tmp_path / "h", images, labels=False, dtype="float16")
    export_store("pa-tsv", store, tmp_path / "f.tsv", progress=False)
    for image_id, got in read_pa_tsv(tmp_path / "f.tsv").items():
        half = FeatureStore(store)[image_id]["features"]
        assert got["features"].dtype == np.float32 and np.array_equal(got["features"], half.astype(np.float32))


def test_ids_choose_the_images_and_their_order_id_format_names_them(variable, tmp_path):
    store, images = variable
    order = list(images)[::-1][:3]
    (tmp_path / "ids.json").write_text(json.dumps([int(i) for i in order]))
    from butd.shards.exporters import load_ids

    export_store("lxmert-tsv", store, tmp_path / "o.tsv", top=10, ids=load_ids(tmp_path / "ids.json"),
                 id_format="COCO_val2014_{:012d}", progress=False)
    peer = read_lxmert_tsv(tmp_path / "o.tsv")
    assert list(peer) == [f"COCO_val2014_{int(i):012d}" for i in order]


@pytest.mark.parametrize("fmt", sorted(EXPORT_FORMATS.names()))
def test_the_toy_store_exports_to_every_format(fmt, tmp_path):
    """The toy world's oracle store (2-5 boxes), given labels, through each layout and its peer reader."""
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    make_toy_world(tmp_path / "toy", ToyConfig(n_images=6, seed=0))
    oracle = FeatureStore(write_oracle_store(tmp_path / "toy", tmp_path / "oracle", dim=24))
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "toy-store", "region") as w:
        for image_id, rec in oracle.items():
            k = int(rec["num_boxes"])
            w.add(image_id, {**rec, "objects_id": rng.integers(0, 1600, k).astype(np.int64),
                             "objects_conf": rng.random(k, dtype=np.float32),
                             "attrs_id": rng.integers(0, 400, k).astype(np.int64),
                             "attrs_conf": rng.random(k, dtype=np.float32)})
    store = FeatureStore(tmp_path / "toy-store")
    fixed = EXPORT_FORMATS.entry(fmt).info["fixed"]
    out = tmp_path / {"pa-tsv": "toy.tsv", "lxmert-tsv": "toy_obj36.tsv", "hh-h5": "toy36.hdf5"}.get(fmt, "exported")
    export_store(fmt, store, out, pad=fixed, progress=False)
    k = int(store.dims["max_boxes"])
    for image_id, rec in store.items():
        n = int(rec["num_boxes"])
        if fmt == "pa-tsv":
            got = read_pa_tsv(out)[image_id]
            feats, boxes = got["features"], got["boxes"]
        elif fmt == "lxmert-tsv":
            got = read_lxmert_tsv(out)[image_id]
            feats, boxes = got["features"], got["boxes"]
            assert got["objects_id"][:n].tobytes() == rec["objects_id"].tobytes()
        elif fmt == "hh-h5":
            got = read_hh_h5(tmp_path, "toy")[int(image_id)]
            feats, boxes = got["features"], got["boxes"]
        elif fmt == "npz-dir":
            got = read_npz_dir(out)[image_id]
            feats, boxes = got["x"], got["bbox"]
        else:
            got = read_rl_dirs(out, [image_id])[image_id]
            feats, boxes = got["att"], got["box"]
        assert feats.shape[0] == (k if fixed else n)
        assert feats[:n].tobytes() == rec["features"].tobytes() and boxes[:n].tobytes() == rec["boxes"].tobytes()
    if fmt == "rl-dirs":
        return  # no importer: the layout has no image sizes (self-critical takes them from its info JSON)
    import_files(fmt, [out], tmp_path / "back", progress=False)  # and back through butd's importer
    back = FeatureStore(tmp_path / "back")
    assert back.image_ids() == store.image_ids()
    held = set(EXPORT_FORMATS.entry(fmt).info["keeps"]) - ({"num_boxes"} if fixed else set())
    for image_id, rec in store.items():
        got, n = back[image_id], int(rec["num_boxes"])
        if not fixed:  # the layout holds the record: bit-exact
            assert_records_equal(got, subset(rec, held))
        else:  # padded to the store's most boxes: the real ones come back bit-exact, then zeros
            for name in held - {"image_w", "image_h"}:
                assert got[name][:n].tobytes() == rec[name].tobytes() and not got[name][n:].any(), name
            assert (int(got["image_w"]), int(got["image_h"])) == (int(rec["image_w"]), int(rec["image_h"]))


@pytest.mark.parametrize("fmt", sorted(EXPORT_FORMATS.names()))
def test_a_failure_mid_export_leaves_nothing(fmt, fixed, tmp_path, monkeypatch):
    from butd.shards.exporters import common

    store, _ = fixed
    real, seen = common.shaped, []

    def failing(rec, plan, counts):
        seen.append(1)
        if len(seen) == 3:
            raise OSError("disk full")
        return real(rec, plan, counts)

    monkeypatch.setattr(common, "shaped", failing)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="disk full"):
        export_store(fmt, store, tmp_path / "out" / "x36.hdf5", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_refusals_name_the_problem_and_write_nothing(variable, fixed, tmp_path):
    var, _ = variable
    lo, hi = FeatureStore(var).dims["min_boxes"], FeatureStore(var).dims["max_boxes"]
    (tmp_path / "o").mkdir()
    cases = [
        ("hh-h5", var, {}, f"holds the same number of boxes for every image; this store has {lo}..{hi}"),
        ("lxmert-tsv", var, {"top": hi - 1}, f"--top {hi - 1}: some images have only {lo} boxes"),
        ("pa-tsv", grid_store(tmp_path / "g"), {}, "pa-tsv holds region features; this is a grid store"),
        ("lxmert-tsv", write_store(tmp_path / "nl", random_images(2, dim=4, boxes=(3, 3)), labels=False), {},
         "needs object and attribute labels"),
        ("hh-h5", fixed[0], {"top": 0}, "--top must be at least 1"),
        ("hh-h5", fixed[0], {"id_format": "x{}"}, "--id-format does not apply to hh-h5"),
        ("npz-dir", fixed[0], {"id_format": "../{}"}, "cannot be a file name inside the output directory"),
        ("pa-tsv", fixed[0], {"ids": ["nope"]}, "are not in the store"),
    ]
    for fmt, store, kw, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            export_store(fmt, store, tmp_path / "o" / "x", progress=False, **kw)
        assert list((tmp_path / "o").iterdir()) == [], fmt


def _butd(*args) -> tuple[int, list[str]]:
    """`python -m butd ARGS` as a user runs it: exit code and every non-empty line of stdout + stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "butd", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=120)
    return p.returncode, [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]


def _tree(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_cli_refuses_each_unfit_store_with_one_line_and_writes_nothing(variable, tmp_path):
    var, _ = variable
    grid = grid_store(tmp_path / "grid")
    unlabelled = write_store(tmp_path / "nl", random_images(2, dim=4, boxes=(3, 3)), labels=False)
    with ShardWriter(tmp_path / "named", "region") as w:
        w.add("cat/001", {"boxes": np.zeros((2, 4), np.float32), "features": np.zeros((2, 4), np.float32),
                          "num_boxes": scalar(2), "image_w": scalar(9), "image_h": scalar(9)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken.tsv").write_text("mine")
    lo, hi = FeatureStore(var).dims["min_boxes"], FeatureStore(var).dims["max_boxes"]
    cases = [  # (args, expected exit code, text the one line must hold)
        (["--format", "hh-h5", var, out / "train36.hdf5"], 2, f"this store has {lo}..{hi}"),
        (["--format", "pa-tsv", grid, out / "g.tsv"], 2, "pa-tsv holds region features; this is a grid store"),
        (["--format", "lxmert-tsv", unlabelled, out / "x_obj36.tsv"], 2, "needs object and attribute labels"),
        (["--format", "pa-tsv", var, out / "taken.tsv"], 2, "taken.tsv exists"),
        (["--format", "hh-h5", tmp_path / "named", out / "n36.hdf5"], 2, "index maps integer image ids"),
        (["--format", "lxmert-tsv", "--top", hi - 1, var, out / "t_obj36.tsv"], 2, f"some images have only {lo} boxes"),
        (["--format", "npz-dir", "--id-format", "../{}", var, out / "npz"], 1, "cannot be a file name inside"),
        (["--format", "rl-dirs", "--top", 0, var, out / "bu"], 2, "--top must be at least 1"),
    ]
    before = {p: p.read_bytes() for p in out.rglob("*")}
    for args, code, text in cases:
        rc, lines = _butd("shards", "export", *args)
        assert rc == code and len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], (args, lines)
        assert {p: p.read_bytes() for p in out.rglob("*")} == before, args  # nothing written, nothing changed
    rc, lines = _butd("shards", "export", "--format", "hh-h5", "--top", "36", "--pad", var, out / "train36.hdf5")
    assert rc == 0 and lines[0].startswith(f"exported 7 images as hh-h5: {out / 'train36.ids.json'}"), lines
    assert _tree(out) == ["taken.tsv", "train36.hdf5", "train36.ids.json", "train36_imgid2idx.pkl"]


def test_folder_ids_become_sub_folders_and_come_back(tmp_path):
    rng = np.random.default_rng(5)
    with ShardWriter(tmp_path / "f", "region") as w:
        for image_id in ("cats/001", "dogs/a/002"):
            w.add(image_id, {"boxes": rng.random((3, 4), dtype=np.float32), "features": rng.random((3, 4), np.float32),
                             "num_boxes": scalar(3), "image_w": scalar(9), "image_h": scalar(9)})
    export_store("npz-dir", tmp_path / "f", tmp_path / "npz", progress=False)
    export_store("rl-dirs", tmp_path / "f", tmp_path / "bu", progress=False)
    assert (tmp_path / "npz" / "dogs" / "a" / "002.npz").is_file()
    assert (tmp_path / "bu_box" / "cats" / "001.npy").is_file()
    import_files("npz-dir", [tmp_path / "npz"], tmp_path / "back", progress=False)
    src, back = FeatureStore(tmp_path / "f"), FeatureStore(tmp_path / "back")
    assert back.image_ids() == src.image_ids()
    for image_id in src.image_ids():
        assert_records_equal(back[image_id], src[image_id])
    got = read_rl_dirs(tmp_path / "bu", ["cats/001"])["cats/001"]
    assert got["att"].tobytes() == src["cats/001"]["features"].tobytes()
