"""The registry's weights section: listed, fetched as a file, refused without a sha256 unless trusted."""

import hashlib
import json

import pytest
from click.testing import CliRunner
from fault_http_server import FaultServer

from butd.cli.shards import download_cmd
from butd.shards.publish import DownloadError
from butd.shards.weights_download import download_weights, load_weights_registry

FAST = {"backoff": 0.05, "progress": False, "timeout": 5}


def test_shipped_entries_name_both_published_checkpoints():
    reg = load_weights_registry()
    files = {e["file"]: e for e in reg.values()}
    assert {"faster_rcnn_from_caffe_attr.pkl", "bua-caffe-frcn-r101_with_attributes.pth"} <= set(files)
    assert files["faster_rcnn_from_caffe_attr.pkl"]["layout"] == "d2"
    assert files["bua-caffe-frcn-r101_with_attributes.pth"]["layout"] == "caffe"
    assert all(e["sha256"] is None for e in reg.values())  # no public source states one


@pytest.fixture
def served(tmp_path):
    (tmp_path / "www").mkdir()
    blob = bytes(range(256)) * 4000
    (tmp_path / "www" / "ck.pkl").write_bytes(blob)
    with FaultServer(tmp_path / "www") as srv:
        reg = tmp_path / "reg.json"
        reg.write_text(json.dumps({"version": 1, "datasets": {}, "weights": {
            "ck": {"url": srv.url + "/ck.pkl", "file": "ck.pkl", "size": None, "sha256": None},
            "pinned": {"url": srv.url + "/ck.pkl", "file": "p.pkl", "sha256": hashlib.sha256(blob).hexdigest()},
            "wrong": {"url": srv.url + "/ck.pkl", "file": "w.pkl", "sha256": "0" * 64}}}))
        yield srv, reg, blob


def test_unpinned_weights_need_trust_and_print_the_sha256(served, tmp_path):
    srv, reg, blob = served
    with pytest.raises(DownloadError, match="--trust-on-first-use"):
        download_weights("ck", tmp_path / "w", registry=reg, **FAST)
    assert not (tmp_path / "w").exists()
    logs = []
    path, digest, n = download_weights("ck", tmp_path / "w", registry=reg, trust_on_first_use=True,
                                       log=logs.append, **FAST)
    assert path.read_bytes() == blob and n == len(blob) and digest == hashlib.sha256(blob).hexdigest()
    assert any(digest in m and "trust on first use" in m for m in logs)


def test_pinned_weights_are_verified(served, tmp_path):
    srv, reg, blob = served
    path, digest, _ = download_weights("pinned", tmp_path / "w", registry=reg, **FAST)
    assert path.read_bytes() == blob
    with pytest.raises(DownloadError, match="sha256"):
        download_weights("wrong", tmp_path / "w", registry=reg, **FAST)
    assert not (tmp_path / "w" / "w.pkl").exists()


def test_cli_lists_and_fetches_weights(served, tmp_path):
    srv, reg, blob = served
    r = CliRunner().invoke(download_cmd, ["--list", "--registry", str(reg)])
    assert r.exit_code == 0 and "bua-r101-caffe-attr" in r.output and "ck " in r.output
    r = CliRunner().invoke(download_cmd, ["ck", "--to", str(tmp_path / "w"), "--registry", str(reg),
                                          "--trust-on-first-use", "--no-progress", "--backoff", "0.05"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w" / "ck.pkl").read_bytes() == blob and "butd weights convert" in r.output
