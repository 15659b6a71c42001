"""publish / download: resume, retries, verification, trust, URL policy, legacy import, CLI.

Every test talks only to a FaultServer it starts on 127.0.0.1; backoff is 0.05 s.
"""

import hashlib
import json
import socket
import time
import urllib.request
import zipfile

import pytest
from click.testing import CliRunner
from fault_http_server import FaultServer
from legacy_format_writers import random_images, write_pa_tsv
from store_helpers import assert_records_equal

from butd.cli import main
from butd.shards import FeatureStore, StoreError, verify_store
from butd.shards.download import DownloadError, download
from butd.shards.publish import apply_mirror, check_url, publish_store
from butd.shards.sources import load_registry

FAST = {"backoff": 0.05, "progress": False, "timeout": 5}
SHARD = "/pub/shard-00000.lmdb"


@pytest.fixture
def published(make_store, tmp_path):
    """A 3-shard store published under tmp/www/pub, served; yields (server, records, www)."""
    store, recs = make_store(n=6, max_records=2, dim=64)
    publish_store(store, tmp_path / "www" / "pub", name="tiny")
    with FaultServer(tmp_path / "www") as srv:
        yield srv, recs, tmp_path / "www" / "pub"


def _records_equal(path, recs):
    store = FeatureStore(path)
    assert sorted(store.image_ids()) == sorted(recs)
    for image_id, rec in recs.items():
        assert_records_equal(store[image_id], rec)


def test_publish_layout_and_roundtrip(published, tmp_path):
    srv, recs, pub = published
    index = json.loads((pub / "index.json").read_text())
    raw = (pub / "manifest.json").read_bytes()
    assert index["name"] == "tiny" and index["num_records"] == 6 and index["kind"] == "region"
    assert index["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    assert index["dims"]["feature_dim"] == 64
    assert verify_store(pub).ok
    result = download(srv.url + "/pub", tmp_path / "got", jobs=3, **FAST)
    assert result.report.ok and result.sha256 == index["manifest_sha256"]
    assert (tmp_path / "got" / "manifest.json").read_bytes() == raw
    assert not list((tmp_path / "got").glob("*.part"))
    _records_equal(tmp_path / "got", recs)


def test_publish_refuses_corrupt_store(make_store, tmp_path):
    store, _ = make_store(n=4, max_records=2, dim=64)
    shard = store / "shard-00001.lmdb"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="refusing to publish.*shard-00001"):
        publish_store(store, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_drop_mid_file_resumes_with_range(published, tmp_path):
    srv, recs, pub = published
    srv.fault(SHARD, "drop")
    download(srv.url + "/pub", tmp_path / "got", jobs=2, **FAST)
    reqs = srv.requests_for(SHARD)
    half = (pub / "shard-00000.lmdb").stat().st_size // 2
    assert [r["range"] for r in reqs] == [None, f"bytes={half}-"]
    assert (tmp_path / "got" / "shard-00000.lmdb").read_bytes() == (pub / "shard-00000.lmdb").read_bytes()
    _records_equal(tmp_path / "got", recs)


def test_failed_run_leaves_no_manifest_and_next_run_resumes(published, tmp_path):
    srv, recs, pub = published
    srv.fault(SHARD, "drop")
    dest = tmp_path / "got"
    with pytest.raises(DownloadError, match="shard-00000.lmdb.*giving up after 0 retries") as err:
        download(srv.url + "/pub", dest, retries=0, **FAST)
    assert "no manifest" in str(err.value)
    assert not (dest / "manifest.json").exists()
    half = (pub / "shard-00000.lmdb").stat().st_size // 2
    assert (dest / "shard-00000.lmdb.part").stat().st_size == half
    with pytest.raises(StoreError):
        FeatureStore(dest)
    download(srv.url + "/pub", dest, retries=0, **FAST)  # a new run picks the .part up
    assert srv.requests_for(SHARD)[-1]["range"] == f"bytes={half}-"
    _records_equal(dest, recs)


def test_server_ignoring_range_restarts_cleanly(published, tmp_path):
    srv, recs, _ = published
    srv.fault(SHARD, "drop")
    srv.fault(SHARD, "norange")
    download(srv.url + "/pub", tmp_path / "got", **FAST)
    assert len(srv.requests_for(SHARD)) == 2
    _records_equal(tmp_path / "got", recs)


def test_flipped_byte_rejected_and_deleted(published, tmp_path):
    srv, _, _ = published
    srv.fault(SHARD, "flip")
    dest = tmp_path / "got"
    with pytest.raises(DownloadError, match=r"shard-00000\.lmdb: corrupt download .*sha256"):
        download(srv.url + "/pub", dest, **FAST)
    assert not (dest / "shard-00000.lmdb").exists() and not (dest / "shard-00000.lmdb.part").exists()
    assert not (dest / "manifest.json").exists()


def test_404_is_final_and_names_the_url(published, tmp_path):
    srv, _, pub = published
    (pub / "shard-00002.lmdb").unlink()
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"/pub/shard-00002\.lmdb: HTTP 404"):
        download(srv.url + "/pub", tmp_path / "got", retries=5, **FAST)
    assert time.monotonic() - t0 < 3
    assert len(srv.requests_for("/pub/shard-00002.lmdb")) == 1
    assert not (tmp_path / "got" / "manifest.json").exists()


def test_500_retried_until_it_clears(published, tmp_path):
    srv, recs, _ = published
    srv.fault(SHARD, "500", times=2)
    download(srv.url + "/pub", tmp_path / "got", retries=3, **FAST)
    assert [r["fault"] for r in srv.requests_for(SHARD)] == ["500", "500", None]
    _records_equal(tmp_path / "got", recs)


def test_500_fails_clearly_after_retries(published, tmp_path):
    srv, _, _ = published
    srv.fault("/pub/manifest.json", "500", times=None)
    with pytest.raises(DownloadError, match=r"manifest\.json: giving up after 2 retries: HTTP 500"):
        download(srv.url + "/pub", tmp_path / "got", retries=2, **FAST)
    assert len(srv.requests_for("/pub/manifest.json")) == 3


def test_slow_server_times_out_bounded(published, tmp_path):
    srv, _, _ = published
    srv.fault(SHARD, "slow", times=None)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="giving up after 1 retries: timed out"):
        download(srv.url + "/pub", tmp_path / "got", retries=1, backoff=0.05, timeout=0.5, progress=False)
    assert time.monotonic() - t0 < 5
    assert len(srv.requests_for(SHARD)) == 2


def _pa_zip(tmp_path, n=5):
    images = random_images(n, dim=64, boxes=(3, 12), seed=3)
    tsv = write_pa_tsv(tmp_path / "feats.tsv.0", images)
    (tmp_path / "www").mkdir(exist_ok=True)
    archive = tmp_path / "www" / "trainval.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tsv, "trainval/feats.tsv.0")
    return archive, images


def _check_imported(path, images):
    store = FeatureStore(path)
    assert len(store) == len(images)
    for image_id, img in images.items():
        rec = store[image_id]
        assert rec["boxes"].tobytes() == img["boxes"].tobytes()
        assert rec["features"].tobytes() == img["features"].tobytes()
        assert int(rec["image_w"]) == img["image_w"]


def test_legacy_zip_trust_on_first_use(tmp_path):
    archive, images = _pa_zip(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    logs: list[str] = []
    with FaultServer(tmp_path / "www") as srv:
        srv.fault("/trainval.zip", "drop")
        result = download(srv.url + "/trainval.zip", tmp_path / "st", trust_on_first_use=True,
                          log=logs.append, fmt="pa-tsv", **FAST)
    assert result.kind == "archive" and result.sha256 == digest
    assert any(digest in line for line in logs)  # printed so it can be pinned
    assert not (tmp_path / "st.download").exists()
    _check_imported(tmp_path / "st", images)


def test_unknown_checksum_refused_without_tofu(tmp_path):
    _pa_zip(tmp_path)
    with FaultServer(tmp_path / "www") as srv:
        with pytest.raises(DownloadError, match="no sha256 is known.*--trust-on-first-use"):
            download(srv.url + "/trainval.zip", tmp_path / "st", fmt="pa-tsv", **FAST)
        with pytest.raises(DownloadError, match=r"archive URL needs --format \(hh-h5, lxmert-tsv, npz-dir, pa-tsv\)"):
            download(srv.url + "/trainval_36.zip", tmp_path / "st", trust_on_first_use=True, **FAST)
        assert srv.requests == []  # refused before any byte: the format is never guessed from the name
    assert not (tmp_path / "st").exists()


def test_registry_name_with_mirror_and_pinned_sha(tmp_path):
    archive, images = _pa_zip(tmp_path)
    digest, size = hashlib.sha256(archive.read_bytes()).hexdigest(), archive.stat().st_size
    (tmp_path / "www" / "mirror" / "pub").mkdir(parents=True)
    archive.rename(tmp_path / "www" / "mirror" / "pub" / "trainval.zip")
    reg = {"version": 1, "datasets": {
        "good": {"url": "https://features.example.org/pub/trainval.zip", "format": "pa-tsv",
                 "size": size, "sha256": digest,
                 "description": "test"},
        "bad": {"url": "https://features.example.org/pub/trainval.zip", "format": "pa-tsv",
                "size": None, "sha256": "0" * 64, "description": "wrong pin"}}}
    (tmp_path / "reg.json").write_text(json.dumps(reg))
    assert "good" in load_registry(tmp_path / "reg.json") and "bua-coco-trainval-36" in load_registry()
    with FaultServer(tmp_path / "www") as srv:
        mirror = srv.url + "/mirror"
        with pytest.raises(DownloadError, match=r"trainval\.zip: corrupt download .*sha256"):
            download("bad", tmp_path / "st", registry=tmp_path / "reg.json", mirror=mirror, **FAST)
        assert not list((tmp_path / "st.download").glob("trainval.zip*"))
        download("good", tmp_path / "st", registry=tmp_path / "reg.json", mirror=mirror, **FAST)
        assert srv.requests_for("/mirror/pub/trainval.zip")
    _check_imported(tmp_path / "st", images)


def test_plain_http_refused_before_any_network(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    for src in ("http://example.invalid/store", "http://example.invalid/trainval.zip", "ftp://example.invalid/x"):
        with pytest.raises(DownloadError, match="refused|unsupported URL scheme"):
            download(src, tmp_path / "st", trust_on_first_use=True, fmt="pa-tsv", **FAST)
    with pytest.raises(DownloadError, match="plain http is refused"):  # a mirror cannot downgrade either
        download("https://example.invalid/store", tmp_path / "st", mirror="http://example.invalid", **FAST)
    assert not (tmp_path / "st").exists()
    check_url("http://127.0.0.1:1/x", allow_http=False)
    check_url("http://[::1]:1/x", allow_http=False)
    check_url("http://example.invalid/x", allow_http=True)


def test_apply_mirror_and_shipped_registry():
    assert apply_mirror("https://a.org/data/x.zip?v=1", "https://m.net/pre/") == "https://m.net/pre/data/x.zip?v=1"
    assert apply_mirror("https://a.org/data/x.zip", None) == "https://a.org/data/x.zip"
    reg = load_registry()
    assert {"bua-coco-trainval", "bua-coco-trainval-36", "lxmert-coco-train2014", "lxmert-coco-val2014"} \
        <= set(reg)
    for entry in reg.values():
        assert entry["url"].startswith("https://")
        assert {"format", "size", "sha256", "description"} <= set(entry)


def test_cli_publish_download_verify(make_store, tmp_path):
    store, recs = make_store(n=5, max_records=2, dim=64)
    runner = CliRunner()
    res = runner.invoke(main, ["shards", "publish", str(store), str(tmp_path / "www" / "store"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert '"format": "store"' in res.output
    with FaultServer(tmp_path / "www") as srv:
        res = runner.invoke(main, ["download", srv.url + "/store", "--to", str(tmp_path / "dl"), "--no-progress"])
        assert res.exit_code == 0, res.output
        assert "verified, 5 records" in res.output
        res = runner.invoke(main, ["download", srv.url + "/none", "--to", str(tmp_path / "dl2"), "--no-progress"])
        assert res.exit_code == 1 and "HTTP 404" in res.output
    assert verify_store(tmp_path / "dl").ok
    _records_equal(tmp_path / "dl", recs)
    res = runner.invoke(main, ["download", "--list"])
    assert res.exit_code == 0 and "lxmert-coco-val2014" in res.output


def test_complete_part_from_killed_run_gets_416_and_is_used(tmp_path):
    archive, images = _pa_zip(tmp_path)
    (tmp_path / "st.download").mkdir()
    (tmp_path / "st.download" / "trainval.zip.part").write_bytes(archive.read_bytes())
    with FaultServer(tmp_path / "www") as srv:
        download(srv.url + "/trainval.zip", tmp_path / "st", trust_on_first_use=True, log=print, fmt="pa-tsv",
                 **FAST)
        assert [r["range"] for r in srv.requests] == [f"bytes={archive.stat().st_size}-"]
    _check_imported(tmp_path / "st", images)


def test_rerun_repairs_a_damaged_file_and_hides_manifest_meanwhile(published, tmp_path):
    srv, recs, _ = published
    dest = tmp_path / "got"
    download(srv.url + "/pub/manifest.json", dest, **FAST)
    (dest / "shard-00001.lmdb").write_bytes(b"garbage")
    srv.fault("/pub/shard-00001.lmdb", "404")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(srv.url + "/pub", dest, **FAST)
    assert not (dest / "manifest.json").exists()
    download(srv.url + "/pub", dest, **FAST)
    assert [r["path"] for r in srv.requests[-2:]] == ["/pub/manifest.json", "/pub/shard-00001.lmdb"]
    _records_equal(dest, recs)
