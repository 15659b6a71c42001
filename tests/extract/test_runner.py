"""Ray runner end to end: real photos + broken files via the CLI, kill -9 safety, a two-node cluster."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

ray = pytest.importorskip("ray")

from butd.errors import UserError  # noqa: E402
from butd.extract.registry import extractor_config  # noqa: E402
from butd.extract.runner import FAILURES_NAME, run_extraction, start_local_ray  # noqa: E402
from butd.extract.sources import iter_source  # noqa: E402
from butd.shards import FeatureStore, verify_store  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")
BROKEN = {"zero": b"", "text": b"definitely not a jpeg\n"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def _add_broken(root: Path) -> None:
    for name, data in BROKEN.items():
        (root / f"{name}.jpg").write_bytes(data)
    good = (root / "sub").glob("*.jpg") if (root / "sub").is_dir() else root.glob("*.jpg")
    data = next(iter(sorted(good))).read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos shipped by skimage / sklearn / matplotlib, plus broken files."""
    import matplotlib.cbook as cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    Image.fromarray(skimage.data.chelsea()).save(root / "sub" / "chelsea.jpg")
    Image.fromarray(skimage.data.coffee()).save(root / "sub" / "coffee.png")
    Image.fromarray(skimage.data.camera()).save(root / "camera.png")  # grayscale
    for name, img in zip(("china", "flower"), load_sample_images().images):
        Image.fromarray(img).save(root / f"{name}.jpg")
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        (root / "grace_hopper.jpg").write_bytes(f.read())
    _add_broken(root)
    return root


def _kill_session(sid: int) -> None:
    """SIGKILL what is left of the session our CLI subprocess led (Ray helpers that made their own group)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def _records(path: Path) -> dict[str, dict[str, bytes]]:
    store = FeatureStore(path)
    return {k: {f: np.ascontiguousarray(v).tobytes() + str(v.dtype).encode() for f, v in store[k].items()}
            for k in store.image_ids()}


def test_cli_real_photos_with_broken_files(photos: Path, tmp_path: Path, local_ray: None) -> None:
    from click.testing import CliRunner

    from butd.cli import main

    out = tmp_path / "store"
    args = ["--dataset", "folder", "--root", str(photos), "--extractor", "effnetlite0", "--image-size", "96",
            "--out", str(out), "--workers", "1", "--shard-size", "2", "--batch-size", "2", "--no-progress"]
    res = CliRunner().invoke(main, ["extract", *args, "--json"])
    assert res.exit_code == 3, res.output + repr(res.exception)  # 3: some images could not be read
    assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"]
    assert res.stderr.count("device: cpu (1 model actor(s))") == 1  # --device auto, the choice said once
    summary = json.loads(res.stdout.strip().splitlines()[0])
    assert (summary["total"], summary["written"], summary["failed"]) == (9, 6, 3)
    # the model worker's peak memory (tests/extract/test_worker_stats.py): a process holding torch + the net
    assert len(summary["peak_rss_bytes"]) == 1 and 100 * 2**20 < summary["peak_rss_bytes"][0] < 64 * 2**30
    assert summary["cuda_max_allocated_bytes"] == [] and 0 < summary["busy_fraction"][0] <= 1
    assert verify_store(out, progress=False).ok
    store = FeatureStore(out)
    want = ["camera", "china", "flower", "grace_hopper", "sub/chelsea", "sub/coffee"]
    assert sorted(store.image_ids()) == want
    man = store.manifest
    assert man["extractor"]["name"] == "effnetlite0" and len(man["extractor"]["weights_sha256"]) == 64
    assert man["extractor"]["config"]["image_size"] == 96 and man["source"]["dataset"] == "folder"
    cat = store["sub/chelsea"]
    assert cat["features"].shape == (9, 1280) and (int(cat["image_w"]), int(cat["image_h"])) == (451, 300)
    fails = [json.loads(x) for x in (out / FAILURES_NAME).read_text().splitlines()]
    assert [f["image_id"] for f in fails] == ["text", "truncated", "zero"]
    assert all(f["reason"] and Path(f["where"]).name == f["image_id"] + ".jpg" for f in fails)
    # a rerun of a finished store is a no-op, summarised for a person unless --json
    again = CliRunner().invoke(main, ["extract", *args])
    assert again.exit_code == 3 and again.stdout.splitlines() == [
        f"{out}: 0 written, 6 already done, 3 failed of 9 images", f"unreadable images and why: {out / FAILURES_NAME}"]


def _kill_cmd(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "butd", "extract", "--dataset", "folder", "--root", str(root),
            "--extractor", "effnetlite0", "--image-size", "64", "--out", str(out), "--workers", "1",
            "--shard-size", "4", "--batch-size", "2", "--threads", "1", "--no-progress", "--no-verify"]


def test_kill_9_then_resume_is_bitwise_identical(tmp_path: Path, local_ray: None) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(30):
        pixels = rng.integers(0, 255, (48 + i % 5, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"im{i:03d}.jpg")
    _add_broken(root)
    (root / "im0105.jpg").write_bytes(b"")  # broken files among the good ones, not only at the end
    (root / "im0205.jpg").write_text("text")
    cfg = extractor_config("effnetlite0", image_size=64)
    clean = tmp_path / "clean"
    s = run_extraction(iter_source("folder", root), cfg, clean, shard_size=4, batch_size=2, workers=1,
                       threads=1, progress=False)
    assert (s.written, s.failed) == (30, 5)

    out = tmp_path / "killed"
    rnd = random.Random(os.getpid())
    targets = sorted(rnd.sample(range(1, 8), 2))  # kill while shard k is written / just committed
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen(_kill_cmd(root, out), env=_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        if attempt == 0:
            time.sleep(rnd.uniform(0.3, 2.5))  # anywhere in start-up
        else:
            prefix = f"shard-{targets[attempt - 1]:05d}"
            while time.time() < deadline and proc.poll() is None and not list(out.glob(prefix + "*")):
                time.sleep(0.003)
            time.sleep(rnd.uniform(0.0, 0.1))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        _kill_session(proc.pid)
        assert not (out / "manifest.json").exists() or attempt > 0
    assert kills >= 2
    done = subprocess.run(_kill_cmd(root, out)[:-1], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]  # 3: some images could not be read
    assert verify_store(out, progress=False).ok
    assert _records(out) == _records(clean)
    assert (out / FAILURES_NAME).read_bytes() == (clean / FAILURES_NAME).read_bytes()
    assert FeatureStore(out).manifest["extractor"] == FeatureStore(clean).manifest["extractor"]


def test_resume_with_other_settings_is_refused(photos: Path, tmp_path: Path, local_ray: None) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"extractor": {"name": "effnetlite0"}, "shard_size": 1}))
    with pytest.raises(UserError, match="other settings: batch_size, extractor.config, shard_size"):
        run_extraction(iter_source("folder", photos), extractor_config("effnetlite0", image_size=64), out,
                       workers=1, progress=False)

def test_two_node_cluster(tmp_path: Path, local_ray: None) -> None:
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's local instance; this test brings its own cluster
    from butd.datasets.toy import ToyConfig, make_toy_world

    make_toy_world(tmp_path / "toy", ToyConfig(n_images=8, seed=2, min_size=64, max_size=96))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        cfg = extractor_config("effnetlite0", mode="boxes", image_size=64)
        out = tmp_path / "store"
        s = run_extraction(iter_source("toy", tmp_path / "toy", mode="boxes"), cfg, out,
                           address=cluster.address, workers=1, shard_size=3, batch_size=2, progress=False)
        assert (s.total, s.written, s.failed) == (8, 8, 0)
        assert [n.node_ip_address for n in cluster.list_all_nodes()] == ["127.0.0.1", "127.0.0.1"]
        store = FeatureStore(out)
        assert store.kind == "region" and verify_store(out, progress=False).ok
        world = json.loads((tmp_path / "toy" / "toy_world.json").read_text())["images"]
        for img in world:
            rec = store[str(img["image_id"])]
            gt = np.asarray([o["box"] for o in img["objects"]], np.float32)
            np.testing.assert_array_equal(rec["boxes"], gt)
            assert rec["features"].shape == (len(img["objects"]), 1280)
    finally:
        ray.shutdown()
        cluster.shutdown()



@pytest.mark.slow
def test_cli_detector_on_a_real_photo_and_broken_files(photos: Path, tmp_path: Path, local_ray: None) -> None:
    """The issue's done-when for bua-r101: a verified store from real photos, broken files in failures."""
    from click.testing import CliRunner

    from butd.cli import main

    root = tmp_path / "photos"
    root.mkdir()
    (root / "grace_hopper.jpg").write_bytes((photos / "grace_hopper.jpg").read_bytes())
    for name in ("zero.jpg", "text.jpg"):
        (root / name).write_bytes((photos / name).read_bytes())
    out = tmp_path / "store"
    args = ["--dataset", "folder", "--root", str(root), "--extractor", "bua-r101", "--weights", "random",
            "--min-boxes", "36", "--max-boxes", "36", "--out", str(out), "--workers", "1", "--no-progress"]
    res = CliRunner().invoke(main, ["extract", *args])
    assert res.exit_code == 3, res.output + repr(res.exception)
    assert verify_store(out, progress=False).ok
    store = FeatureStore(out)
    assert store.manifest["extractor"]["weights"] == "random"
    rec = store["grace_hopper"]
    assert rec["features"].shape == (36, 2048) and rec["objects_id"].shape == (36,)
    assert (int(rec["image_w"]), int(rec["image_h"])) == (512, 600)
    assert store.manifest["extractor"]["name"] == "bua-r101"
    fails = sorted(json.loads(x)["image_id"] for x in (out / FAILURES_NAME).read_text().splitlines())
    assert fails == ["text", "zero"]


def test_nothing_extracted_exits_1_leaves_no_folder_and_no_ray_notices(tmp_path: Path) -> None:
    """A real start (its own Ray): every image broken -> one Error line, exit 1, no store folder; Ray's own
    notices (token authentication, worker logs) stay out of the terminal."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name, data in BROKEN.items():
        (root / f"{name}.jpg").write_bytes(data)
    out = tmp_path / "store"
    r = subprocess.run(_kill_cmd(root, out), env=_env(), capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 1, r.stderr[-3000:]
    assert lines[-1].startswith("Error: no image could be extracted (2 failed; first: text.jpg: ")
    assert not any("Token authentication" in ln or "ray" in ln.lower() for ln in lines), lines
    assert not out.exists()


def test_weights_that_do_not_load_are_one_line_not_a_dead_actor(photos: Path, tmp_path: Path,
                                                                 local_ray: None) -> None:
    from click.testing import CliRunner

    from butd.cli import main

    bad = tmp_path / "bua.safetensors"
    bad.write_bytes(b"not safetensors at all")
    out = tmp_path / "store"
    res = CliRunner().invoke(main, ["extract", "--dataset", "folder", "--root", str(photos), "--extractor",
                                    "bua-r101", "--weights", str(bad), "--out", str(out), "--no-progress"])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output[-3000:]
    assert "the bua-r101 extractor could not start (" in errors[0] and "not a safetensors file" in errors[0]
    assert not out.exists()
