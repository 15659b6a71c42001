import gc
import json
import os
import pickle
import struct

import lmdb
import numpy as np
import pytest
import torch
from store_helpers import assert_records_equal, region_record

from butd.shards import (
    DecodeError,
    DuplicateKeyError,
    FeatureStore,
    IncompleteStoreError,
    RecordError,
    ShardWriter,
    StoreError,
    read_manifest,
    scalar,
    sha256_file,
    verify_store,
)


def test_round_trip_is_bit_exact_and_rolls_shards(make_store):
    path, recs = make_store(25, max_records=7)
    store = FeatureStore(path)
    assert len(store) == 25 and store.kind == "region"
    assert sorted(store.image_ids()) == sorted(recs)
    m = store.manifest
    assert [s["records"] for s in m["shards"]] == [7, 7, 7, 4]
    assert m["dims"]["feature_dim"] == 32 and m["dims"]["feature_dtype"] == "float32"
    assert m["dims"]["min_boxes"] == min(int(r["num_boxes"]) for r in recs.values())
    for image_id, rec in recs.items():
        assert_records_equal(store[image_id], rec)
    assert dict(store.items()).keys() == recs.keys()
    with pytest.raises(KeyError):
        store["nope"]
    assert "img003" in store and "nope" not in store
    assert verify_store(path).ok


def test_rolls_by_bytes(tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "s", "region", max_records=10_000, max_bytes=20_000) as w:
        for i in range(10):
            w.add(str(i), region_record(rng, k=20, dim=64))  # ~5.5 kB per record
    shards = read_manifest(tmp_path / "s")["shards"]
    assert len(shards) >= 3 and all(s["records"] <= 3 for s in shards)


def test_grid_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rec = {"features": rng.standard_normal((196, 512)).astype(np.float16), "grid_h": scalar(14),
           "grid_w": scalar(14), "image_w": scalar(224), "image_h": scalar(224)}
    with ShardWriter(tmp_path / "g", "grid") as w:
        w.add("a/b c", rec)
    store = FeatureStore(tmp_path / "g")
    assert store.kind == "grid" and store.dims["grid"] == [14, 14]
    assert_records_equal(store["a/b c"], rec)


def test_arrays_outlive_the_store_object(make_store):
    path, recs = make_store(5)
    store = FeatureStore(path)
    feats = store["img001"]["features"]
    assert not feats.flags.writeable and not feats.flags.owndata  # a view on the map
    del store
    gc.collect()
    assert feats.tobytes() == recs["img001"]["features"].tobytes()


def test_two_readers_of_one_store_in_one_process(make_store):
    path, recs = make_store(5)
    a, b = FeatureStore(path), FeatureStore(path)
    assert_records_equal(a["img000"], b["img000"])
    assert verify_store(path).ok  # verify opens the same files too
    assert_records_equal(a["img004"], recs["img004"])


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store, ids):
        self.store, self.ids = store, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        rec = self.store[self.ids[i]]
        return torch.from_numpy(np.array(rec["features"]).sum(0)), os.getpid()


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_works_in_dataloader_workers(make_store, ctx):
    path, recs = make_store(12)
    store = FeatureStore(path)
    store["img000"]  # opened in the parent first: children must reopen, not reuse
    ids = sorted(recs)
    loader = torch.utils.data.DataLoader(_StoreDataset(store, ids), batch_size=3, num_workers=2,
                                         multiprocessing_context=ctx)
    sums, pids = zip(*[(s, p) for batch in loader for s, p in zip(*batch)])
    assert os.getpid() not in {int(p) for p in pids}
    for image_id, s in zip(ids, sums):
        assert torch.equal(s, torch.from_numpy(recs[image_id]["features"].sum(0)))


def test_store_without_manifest_is_incomplete(tmp_path):
    rng = np.random.default_rng(0)
    w = ShardWriter(tmp_path / "s", "region", max_records=2)
    for i in range(5):
        w.add(str(i), region_record(rng))
    # the writer "crashes" here: two shards committed, one in progress, no manifest
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        FeatureStore(tmp_path / "s")
    report = verify_store(tmp_path / "s")
    assert not report.ok and "incomplete" in report.problems[0]


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(3)
    recs = {str(i): region_record(rng) for i in range(11)}
    w = ShardWriter(tmp_path / "s", "region", max_records=3)
    for image_id in list(recs)[:8]:
        w.add(image_id, recs[image_id])
    del w  # killed: shards 0,1 committed, shard 2 half-written as .tmp
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "shard-00000.lmdb", "shard-00001.lmdb", "shard-00002.lmdb.tmp"]
    with pytest.raises(StoreError, match="unfinished"):
        ShardWriter(tmp_path / "s", "region")
    with ShardWriter(tmp_path / "s", "region", max_records=3, resume=True) as w:
        todo = [i for i in recs if i not in w]
        assert len(todo) == 5
        for image_id in todo:
            w.add(image_id, recs[image_id])
    store = FeatureStore(tmp_path / "s")
    assert len(store) == 11
    for image_id, rec in recs.items():
        assert_records_equal(store[image_id], rec)
    assert verify_store(tmp_path / "s").ok


def test_bad_records_are_refused_and_nothing_is_stored(tmp_path):
    rng = np.random.default_rng(0)
    good = region_record(rng, k=5)
    with ShardWriter(tmp_path / "s", "region") as w:
        w.add("a", good)
        bad_cases = {
            "width": dict(good, features=np.zeros((5, 31), np.float32)),
            "dtype": dict(good, features=np.zeros((5, 32), np.float64)),
            "count": dict(good, num_boxes=scalar(6)),
            "boxes": dict(good, boxes=np.zeros((5, 5), np.float32)),
            "missing": {k: v for k, v in good.items() if k != "image_w"},
            "unknown": dict(good, extra=np.zeros(5, np.float32)),
            "fields": dict(good, objects_id=np.zeros(5, np.int64)),
        }
        for name, rec in bad_cases.items():
            with pytest.raises(RecordError):
                w.add(name, rec)
        with pytest.raises(DuplicateKeyError):
            w.add("a", good)
        w.add("b", good)
    assert sorted(FeatureStore(tmp_path / "s").image_ids()) == ["a", "b"]


def test_exception_inside_writer_removes_the_partial_store(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", "region", max_records=1) as w:
            w.add("a", region_record(rng))
            w.add("b", region_record(rng))
            raise RuntimeError("boom")
    assert not (tmp_path / "s").exists()


def _rehash(path):
    """What an attacker who controls the whole store would do: fix up every hash."""
    m = json.loads((path / "manifest.json").read_text())
    for e in [*m["shards"], m["index"]]:
        f = path / e["file"]
        e["bytes"], e["sha256"] = f.stat().st_size, sha256_file(f)
    (path / "manifest.json").write_text(json.dumps(m))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_record_crafted_as_a_pickle_is_rejected_without_executing(make_store, tmp_path):
    path, _ = make_store(5, max_records=100)
    marker = tmp_path / "pwned"
    env = lmdb.open(str(path / "shard-00000.lmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"img002", pickle.dumps(_Exploit(str(marker))))
    env.close()
    _rehash(path)
    store = FeatureStore(path)
    with pytest.raises(DecodeError, match="not a butd record"):
        store["img002"]
    report = verify_store(path)
    assert not report.ok and "img002" in report.problems[0]
    assert not marker.exists()
    store["img001"]  # the other records still read


@pytest.mark.parametrize("target", ["shard-00000.lmdb", "shard-00002.lmdb", "index.lmdb"])
def test_verify_catches_a_flipped_byte_in_any_file(make_store, target):
    path, _ = make_store(20, max_records=7)
    f = path / target
    data = bytearray(f.read_bytes())
    pos = len(data) // 2 + 13
    data[pos] ^= 0x01
    f.write_bytes(bytes(data))
    report = verify_store(path)
    assert not report.ok and target in report.problems[0] and "sha256" in report.problems[0]


def test_verify_and_open_catch_a_truncated_shard(make_store):
    path, _ = make_store(20, max_records=7)
    f = path / "shard-00001.lmdb"
    f.write_bytes(f.read_bytes()[:-4096])
    report = verify_store(path)
    assert not report.ok and "truncated" in report.problems[0]
    with pytest.raises(StoreError, match="truncated"):
        FeatureStore(path)


def test_index_maps_every_id_to_its_shard(make_store):
    path, recs = make_store(15, max_records=4)
    env = lmdb.open(str(path / "index.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        shards = {k.decode(): struct.unpack("<I", v)[0] for k, v in txn.cursor()}
    env.close()
    assert sorted(shards) == sorted(recs) and sorted(set(shards.values())) == [0, 1, 2, 3]


def test_refuses_to_overwrite_a_complete_store(make_store):
    path, _ = make_store(3)
    with pytest.raises(StoreError, match="complete store"):
        ShardWriter(path, "region")


def test_a_failing_resumed_writer_keeps_the_shards_it_adopted(tmp_path):
    rng = np.random.default_rng(5)
    w = ShardWriter(tmp_path / "s", "region", max_records=2)
    for i in range(5):
        w.add(str(i), region_record(rng))
    del w  # killed after committing shards 0 and 1
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", "region", max_records=2, resume=True) as w:
            w.add("new", region_record(rng))
            raise RuntimeError("crash during the resumed run")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["shard-00000.lmdb", "shard-00001.lmdb"]


@pytest.mark.parametrize("edit", [
    lambda m: m["index"].update(file="../../etc/passwd"),
    lambda m: m["shards"][0].update(file="/abs/path"),
    lambda m: m["shards"][0].pop("sha256"),
    lambda m: m.update(spec_version="2.0"),
    lambda m: m.update(kind="video"),
])
def test_hostile_or_broken_manifests_are_refused(make_store, edit):
    path, _ = make_store(3)
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError):
        FeatureStore(path)
    assert not verify_store(path).ok
