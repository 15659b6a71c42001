"""Registry sources: every known location with its status and a reference; `butd download NAME` tries them in
order and names the one that served. Every server here is a FaultServer on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fault_http_server import FaultServer
from legacy_format_writers import random_images, write_pa_tsv

from butd.shards import FeatureStore
from butd.shards.download import DownloadError, download
from butd.shards.sources import fetch_order, load_registry, parse_sources
from butd.shards.weights_download import download_weights

FAST = {"backoff": 0.05, "progress": False, "timeout": 5, "retries": 1}
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def hosts(tmp_path):
    """The same archive on host B (/b/...) and a dead host A (/a/... is absent: 404); a registry naming both,
    A first, and a share page (manual)."""
    images = random_images(4, dim=8, boxes=(36, 36))
    tsv = write_pa_tsv(tmp_path / "feats.tsv.0", images)
    (tmp_path / "www" / "b").mkdir(parents=True)
    archive = tmp_path / "www" / "b" / "trainval_36.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tsv, "trainval_36/feats.tsv.0")
    (tmp_path / "www" / "w").mkdir()
    (tmp_path / "www" / "w" / "ck.pkl").write_bytes(b"weights" * 1000)
    with FaultServer(tmp_path / "www") as srv:
        def sources(path):
            return [{"url": f"{srv.url}/a/{path}", "announced": "https://example.org/README"},  # gone: 404
                    {"url": f"{srv.url}/b/{path}", "announced": "https://example.org/issues/2"},
                    {"url": "https://pan.example.org/s/xyz", "status": "manual", "note": "a share page"}]
        reg = {"version": 1,
               "datasets": {"two": {"format": "pa-tsv", "size": None, "sha256": None,
                                    "sources": sources("trainval_36.zip")},
                            "pinned": {"format": "pa-tsv", "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                                       "sources": sources("trainval_36.zip")}},
               "weights": {"ck": {"file": "ck.pkl", "sha256": None, "sources": [
                   {"url": f"{srv.url}/a/ck.pkl"},
                   {"url": f"{srv.url}/w/ck.pkl"}]}}}
        (tmp_path / "reg.json").write_text(json.dumps(reg))
        yield srv, tmp_path / "reg.json", images


def test_first_source_dead_second_serves_and_is_named(hosts, tmp_path):
    srv, reg, images = hosts
    logs: list[str] = []
    result = download("two", tmp_path / "st", registry=reg, trust_on_first_use=True, log=logs.append, **FAST)
    assert result.url == f"{srv.url}/b/trainval_36.zip"
    assert [r["path"] for r in srv.requests] == ["/a/trainval_36.zip", "/b/trainval_36.zip"]  # never the manual one
    failed = [m for m in logs if m.startswith("source 1/2 of two failed")]
    assert len(failed) == 1 and f"{srv.url}/a/trainval_36.zip: HTTP 404" in failed[0]
    assert f"two: served by source 2/2, {srv.url}/b/trainval_36.zip" in logs
    assert len(FeatureStore(tmp_path / "st")) == len(images)


def test_the_cli_says_which_source_served(hosts, tmp_path):
    srv, reg, _ = hosts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "butd", "download", "pinned", "--to", str(tmp_path / "st"),
                        "--registry", str(reg), "--no-progress", "--backoff", "0.05", "--retries", "1"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"pinned: served by source 2/2, {srv.url}/b/trainval_36.zip" in p.stderr
    assert p.stdout.strip().endswith(f"(archive from {srv.url}/b/trainval_36.zip)")


def test_a_transient_failure_moves_on_and_unpinned_bytes_never_mix(hosts, tmp_path):
    srv, reg, images = hosts
    (srv.root / "a").mkdir()
    (srv.root / "a" / "trainval_36.zip").write_bytes(b"PK" + b"other bytes" * 5000)  # a different file
    srv.fault("/a/trainval_36.zip", "drop", times=None)  # half of it, then the connection drops, every time
    download("two", tmp_path / "st", registry=reg, trust_on_first_use=True, log=lambda m: None, **FAST)
    b_requests = srv.requests_for("/b/trainval_36.zip")
    assert b_requests and b_requests[0]["range"] is None  # host B's file from byte 0, not appended to A's half
    assert len(FeatureStore(tmp_path / "st")) == len(images)


def test_every_source_failing_is_one_line_naming_each(hosts, tmp_path):
    srv, reg, _ = hosts
    srv.fault("/b/trainval_36.zip", "404", times=None)
    with pytest.raises(DownloadError) as err:
        download("two", tmp_path / "st", registry=reg, trust_on_first_use=True, log=lambda m: None, **FAST)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("two: no source served it (1. ")
    assert f"{srv.url}/a/trainval_36.zip" in msg and f"{srv.url}/b/trainval_36.zip" in msg
    assert "to open by hand: https://pan.example.org/s/xyz" in msg
    assert not (tmp_path / "st" / "manifest.json").exists()


def test_weights_try_their_sources_too(hosts, tmp_path):
    srv, reg, _ = hosts
    logs: list[str] = []
    path, _, _ = download_weights("ck", tmp_path / "w", registry=reg, trust_on_first_use=True, log=logs.append,
                                  **FAST)
    assert path.read_bytes() == b"weights" * 1000 and f"ck: served by source 2/2, {srv.url}/w/ck.pkl" in logs
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["ck.pkl"]


def test_sources_are_checked_and_ordered():
    good = parse_sources("x", {"sources": [{"url": "https://d", "status": "dead", "reported": "https://r"},
                                           {"url": "https://m", "status": "manual"}, {"url": "https://u"},
                                           {"url": "https://a", "status": "alive", "reported": "https://r"}]}, "reg")
    assert [s["url"] for s in fetch_order(good)] == ["https://a", "https://u", "https://d"]
    assert parse_sources("x", {"url": "https://u", "mirrors": ["https://m"]}, "reg")[1]["url"] == "https://m"
    for bad, text in [({"sources": [{"url": "https://d", "status": "dead"}]}, "without a 'reported' link"),
                      ({"sources": [{"url": "https://d", "status": "gone"}]}, "has status 'gone'"),
                      ({"sources": []}, "needs 'url' or a non-empty 'sources' list")]:
        with pytest.raises(DownloadError, match=text):
            parse_sources("x", bad, "reg")


def test_the_shipped_registry_gives_every_source_a_status_and_a_reference():
    from click.testing import CliRunner

    from butd.cli import main

    for section in ("datasets", "weights"):
        for name, entry in load_registry(None, section).items():
            assert entry["sources"], name
            for s in entry["sources"]:
                assert s.get("announced", "").startswith("https://github.com/"), (name, s["url"])
                if s["status"] in ("dead", "alive"):
                    assert s["reported"].startswith("https://"), (name, s["url"])
    # the peteanderson80 hosts are the ones reported dead in 2025 (#131, #132)
    bua = load_registry()["bua-coco-trainval-36"]["sources"]
    assert [s["status"] for s in bua[:3]] == ["dead"] * 3
    assert "bottom-up-attention/issues/132" in bua[0]["reported"] and "issues/131" in bua[1]["reported"]
    out = CliRunner().invoke(main, ["download", "--list"]).output
    assert "bua-coco-trainval-36" in out and "status: reported dead: https://github.com/" in out
    assert out.count("announced: https://github.com/") == sum(
        len(e["sources"]) for sec in ("datasets", "weights") for e in load_registry(None, sec).values())
