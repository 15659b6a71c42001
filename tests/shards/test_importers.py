import json
import pickle
import zipfile

import h5py
import numpy as np
import pytest
from legacy_format_writers import (
    b64,
    pa_tsv_line,
    random_images,
    write_hh_h5,
    write_lxmert_tsv,
    write_npz_dir,
    write_pa_tsv,
)
from store_helpers import assert_records_equal

from butd.errors import UserError
from butd.shards import FeatureStore, StoreError, scalar, verify_store
from butd.shards.exporters import export_store
from butd.shards.importers import ImportRowError, import_files


def _expected(img: dict, labels: bool = False) -> dict:
    rec = {"boxes": img["boxes"], "features": img["features"], "num_boxes": scalar(len(img["boxes"])),
           "image_w": scalar(img["image_w"]), "image_h": scalar(img["image_h"])}
    if labels:
        rec.update({k: img[k] for k in ("objects_id", "objects_conf", "attrs_id", "attrs_conf")})
    return rec


def _check_store(path, images, labels=False):
    store = FeatureStore(path)
    assert len(store) == len(images)
    for image_id, img in images.items():
        assert_records_equal(store[image_id], _expected(img, labels))
    assert verify_store(path).ok


def test_pa_tsv_round_trip_plain_multifile_and_zip(tmp_path):
    images = random_images(12, dim=64)
    ids = list(images)
    write_pa_tsv(tmp_path / "feat.tsv", images)
    import_files("pa-tsv", [tmp_path / "feat.tsv"], tmp_path / "a", progress=False)
    _check_store(tmp_path / "a", images)
    # the public archives: one file per GPU, *.tsv.0 *.tsv.1, zipped in a folder
    write_pa_tsv(tmp_path / "x.tsv.0", {i: images[i] for i in ids[:5]})
    write_pa_tsv(tmp_path / "x.tsv.1", {i: images[i] for i in ids[5:]})
    import_files("pa-tsv", [tmp_path / "x.tsv.0", tmp_path / "x.tsv.1"], tmp_path / "b", progress=False)
    _check_store(tmp_path / "b", images)
    with zipfile.ZipFile(tmp_path / "trainval.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_path / "x.tsv.0", "trainval/x.tsv.0")
        zf.write(tmp_path / "x.tsv.1", "trainval/x.tsv.1")
        zf.writestr("trainval/README", "not a tsv")
    import_files("pa-tsv", [tmp_path / "trainval.zip"], tmp_path / "c", progress=False)
    _check_store(tmp_path / "c", images)


def test_lxmert_tsv_round_trip_with_labels(tmp_path):
    images = random_images(6, dim=48, with_labels=True)
    write_lxmert_tsv(tmp_path / "obj36.tsv", images)
    import_files("lxmert-tsv", [tmp_path / "obj36.tsv"], tmp_path / "s", progress=False)
    _check_store(tmp_path / "s", images, labels=True)


def test_hh_h5_import_export_round_trip(tmp_path):
    images = random_images(9, dim=40, boxes=(36, 36))
    index = write_hh_h5(tmp_path / "train36.hdf5", images)
    (tmp_path / "ids.json").write_text(json.dumps(index))
    import_files("hh-h5", [tmp_path / "train36.hdf5"], tmp_path / "s", ids=tmp_path / "ids.json", progress=False)
    _check_store(tmp_path / "s", images)  # image sizes recovered exactly from the spatial features
    out = export_store("hh-h5", tmp_path / "s", tmp_path / "out.h5", progress=False).outputs[-1]
    exported = json.loads(out.with_suffix(".ids.json").read_text())
    with h5py.File(tmp_path / "train36.hdf5") as a, h5py.File(out) as b:
        for name in ("image_features", "image_bb", "spatial_features"):
            for image_id, row in index.items():
                assert a[name][row].tobytes() == b[name][exported[image_id]].tobytes(), name
    import_files("hh-h5", [out], tmp_path / "again", progress=False)  # finds out.ids.json by itself
    _check_store(tmp_path / "again", images)


def test_hh_h5_pickled_index_needs_allow_pickle(tmp_path):
    images = random_images(3, dim=8, boxes=(36, 36))
    index = {int(k): v for k, v in write_hh_h5(tmp_path / "f.h5", images).items()}
    (tmp_path / "train36_imgid2idx.pkl").write_bytes(pickle.dumps(index, protocol=2))
    with pytest.raises(StoreError, match="--allow-pickle"):
        import_files("hh-h5", [tmp_path / "f.h5"], tmp_path / "s", ids=tmp_path / "train36_imgid2idx.pkl",
                     progress=False)
    assert not (tmp_path / "s").exists()
    import_files("hh-h5", [tmp_path / "f.h5"], tmp_path / "s", ids=tmp_path / "train36_imgid2idx.pkl",
                 allow_pickle=True, progress=False)
    _check_store(tmp_path / "s", images)


def test_npz_dir_plain_arrays_only_without_allow_pickle(tmp_path):
    images = random_images(5, dim=32, with_labels=True)
    write_npz_dir(tmp_path / "npz", images)
    summary = import_files("npz-dir", [tmp_path / "npz"], tmp_path / "s", progress=False)
    assert summary.skipped_fields == ["info"]
    _check_store(tmp_path / "s", images, labels=False)
    summary = import_files("npz-dir", [tmp_path / "npz"], tmp_path / "s2", allow_pickle=True, progress=False)
    assert summary.skipped_fields == []
    _check_store(tmp_path / "s2", images, labels=True)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_npz_info_with_a_malicious_pickle_is_refused_even_with_allow_pickle(tmp_path):
    images = random_images(2, dim=8, with_labels=True)
    write_npz_dir(tmp_path / "npz", images)
    marker = tmp_path / "pwned"
    img = images["100000"]
    np.savez_compressed(tmp_path / "npz" / "100000", x=img["features"], bbox=img["boxes"], num_bbox=len(img["boxes"]),
                        image_h=img["image_h"], image_w=img["image_w"], info=np.array(_Exploit(str(marker))))
    with pytest.raises(ImportRowError, match=r"100000\.npz: 'info' could not be read safely"):
        import_files("npz-dir", [tmp_path / "npz"], tmp_path / "s", allow_pickle=True, progress=False)
    assert not marker.exists() and not (tmp_path / "s").exists()


def _bad_tsv_lines(images):
    ids = list(images)
    good = [pa_tsv_line(i, images[i]) for i in ids]
    img = images[ids[0]]
    fields = good[0].rstrip("\n").split("\t")
    return good, {
        "truncated": "\t".join(fields[:4] + [fields[4][:10]]) + "\n",  # cut inside the boxes
        "cut_data": good[1][: len(good[1]) - 1001] + "\n",  # cut inside the features
        "base64": "\t".join(fields[:4] + ["@@not base64@@", fields[5]]) + "\n",
        "num_boxes": "\t".join(["nb"] + fields[1:3] + [str(len(img["boxes"]) + 1)] + fields[4:]) + "\n",
        "duplicate": good[0],
        "width": "\t".join(["wd"] + fields[1:5] + [b64(np.zeros((len(img["boxes"]), 63), np.float32))]) + "\n",
    }


@pytest.mark.parametrize("case,reason", [
    ("truncated", "expected 6 tab-separated fields"),
    ("cut_data", "'features'"),  # bad padding or a count mismatch, depending on the cut
    ("base64", "not valid base64"),
    ("num_boxes", "num_boxes="),
    ("duplicate", "duplicate image id"),
    ("width", "width 63"),
])
def test_bad_tsv_rows_give_a_one_line_error_and_leave_nothing(tmp_path, case, reason):
    images = random_images(4, dim=64)
    good, bad = _bad_tsv_lines(images)
    path = tmp_path / "f.tsv"
    path.write_text("".join(good[:3] + [bad[case]] + good[3:]))
    with pytest.raises(ImportRowError) as err:
        import_files("pa-tsv", [path], tmp_path / "s", progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: ") and reason in msg and "\n" not in msg
    assert not (tmp_path / "s").exists()


def test_skip_bad_records_failures_and_imports_the_rest(tmp_path):
    images = random_images(4, dim=64)
    good, bad = _bad_tsv_lines(images)
    path = tmp_path / "f.tsv"
    path.write_text("".join(good[:2] + list(bad.values()) + good[2:]))
    summary = import_files("pa-tsv", [path], tmp_path / "s", skip_bad=True, progress=False)
    assert summary.records == 4
    failures = [json.loads(line) for line in (tmp_path / "s" / "failures.jsonl").read_text().splitlines()]
    assert [f["where"] for f in failures] == [f"{path}:{n}" for n in range(3, 9)]
    _check_store(tmp_path / "s", images)


def test_unreadable_h5_and_missing_index(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"this is not hdf5")
    (tmp_path / "bad.ids.json").write_text("{}")
    with pytest.raises(StoreError, match=r"bad\.h5: not a readable HDF5 file"):
        import_files("hh-h5", [tmp_path / "bad.h5"], tmp_path / "s", progress=False)
    images = random_images(2, dim=8, boxes=(36, 36))
    write_hh_h5(tmp_path / "noidx.h5", images)
    with pytest.raises(StoreError, match="--ids"):
        import_files("hh-h5", [tmp_path / "noidx.h5"], tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_export_refuses_variable_box_counts(make_store, tmp_path):
    path, _ = make_store(4)
    with pytest.raises(UserError, match="same number of boxes"):
        export_store("hh-h5", path, tmp_path / "o.h5", progress=False)
    assert not (tmp_path / "o.h5").exists()
