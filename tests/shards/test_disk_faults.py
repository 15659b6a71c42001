"""Issue 17: a full disk while importing and while downloading ends in one line, leaves nothing that looks
complete, and the same command rerun after space is freed gives the store an uninterrupted run gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fault_http_server import FaultServer
from legacy_format_writers import random_images, write_pa_tsv
from store_helpers import assert_records_equal

from butd.shards import FeatureStore, verify_store
from butd.shards.publish import publish_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fault helpers
from fs_faults import grow_tmpfs, tmpfs  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _butd(*args: object) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "butd", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line(r: subprocess.CompletedProcess, *has: str) -> str:
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error: ")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for text in has:
        assert text in errors[0], errors[0]
    return errors[0]


def test_import_on_a_full_disk_then_rerun(tmp_path):
    images = random_images(12, dim=512, boxes=(10, 40), seed=5)
    tsv = write_pa_tsv(tmp_path / "feats.tsv", images)
    with tmpfs(tmp_path / "small", "400k") as fs:
        dest = fs / "store"
        _one_line(_butd("shards", "import", "--format", "pa-tsv", tsv, dest), "no space left on the device",
                  "free space and rerun the same command")
        assert not dest.exists()  # an import is not resumable: nothing of it is left
        grow_tmpfs(fs, "64m")
        r = _butd("shards", "import", "--format", "pa-tsv", tsv, dest)
        assert r.returncode == 0, r.stderr[-2000:]
        store = FeatureStore(dest)
        assert sorted(store.image_ids()) == sorted(images)
        for image_id, img in images.items():
            assert (store[image_id]["features"] == img["features"]).all()


def test_download_on_a_full_disk_then_rerun(make_store, tmp_path):
    store, recs = make_store(n=8, max_records=2, dim=2048)
    publish_store(store, tmp_path / "www" / "pub", name="tiny")
    with FaultServer(tmp_path / "www") as srv, tmpfs(tmp_path / "small", "300k") as fs:
        to = fs / "got"
        _one_line(_butd("download", f"{srv.url}/pub", "--to", to, "--no-progress", "--jobs", 1),
                  "no space left on the device", "free space and rerun the same command")
        assert not (to / "manifest.json").exists() and not list(to.glob("*.tmp"))
        grow_tmpfs(fs, "64m")
        r = _butd("download", f"{srv.url}/pub", "--to", to, "--no-progress")
        assert r.returncode == 0, r.stderr[-2000:]
        assert verify_store(to, progress=False).ok
        got = FeatureStore(to)
        for image_id, rec in recs.items():
            assert_records_equal(got[image_id], rec)
