"""Issue 17: faults that used to lose work, typed as a new user would, through the real `butd` command.

Each case ends in one line `Error: <what> (<where>): <what to do>` and a non-zero exit, leaves no temporary
file behind, and the same command run again (after the fault is gone) gives a store or run equal to an
uninterrupted one. Real faults where the machine allows them (a small tmpfs mounted as root, a read-only
mount); otherwise the test is skipped with the reason, and an injected ENOSPC covers the same code path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from butd.shards import FeatureStore, verify_store
from fs_faults import grow_tmpfs as _grow
from fs_faults import tmpfs as _tmpfs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL_CAPTION = {"model": {"embed_dim": 8, "hidden_dim": 16, "att_dim": 8}, "data": {"min_count": 1},
                 "xe": {"log_every": 0, "batch_size": 8}}


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def _butd(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "butd", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _one_error(proc: subprocess.CompletedProcess, code: int = 1, *has: str) -> str:
    """The process failed with ``code`` and printed exactly one Error line (what (where): todo), no traceback."""
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert proc.returncode == code, (proc.returncode, lines[-20:])
    assert len(errors) == 1 and "Traceback" not in proc.stderr, lines[-20:]
    assert " (" in errors[0] and "): " in errors[0], errors[0]
    for text in has:
        assert text in errors[0], errors[0]
    return errors[0]


def _no_tmp(*roots: Path) -> None:
    left = [p for r in roots if r.exists() for p in r.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert not left, left


def _records(store: Path) -> dict[str, dict[str, bytes]]:
    s = FeatureStore(store)
    return {k: {f: np.asarray(v).tobytes() for f, v in s[k].items()} for k in s.image_ids()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faultphotos")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(root / f"im{i:03d}.jpg")
    return root


def _extract(photos: Path, out: Path, *extra: object) -> subprocess.CompletedProcess:
    return _butd("extract", "--dataset", "folder", "--root", photos, "--extractor", "effnetlite0",
                 "--image-size", 64, "--out", out, "--shard-size", 4, "--batch-size", 2, "--workers", 1,
                 "--threads", 1, "--no-progress", *extra)


@pytest.fixture(scope="module")
def clean_store(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "store"
    r = _extract(photos, out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_two_extracts_into_one_out(photos, clean_store, tmp_path):
    out = tmp_path / "store"
    first = subprocess.Popen([sys.executable, "-m", "butd", "extract", "--dataset", "folder", "--root", str(photos),
                              "--extractor", "effnetlite0", "--image-size", "64", "--out", str(out), "--shard-size",
                              "4", "--batch-size", "2", "--workers", "1", "--threads", "1", "--no-progress"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".butd.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = _extract(photos, out)
    line = _one_error(second, 1, "another butd process is writing this store", f"pid {first.pid}")
    assert "rerun the same command" in line
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert verify_store(out, progress=False).ok and _records(out) == _records(clean_store)
    _no_tmp(out)
    again = _extract(photos, out)  # the same command once more: a finished store, nothing to do
    assert again.returncode == 0 and "0 written" in again.stdout


def test_a_lock_left_by_a_killed_process_does_not_block(photos, clean_store, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "butd", "extract", "--dataset", "folder", "--root", str(photos),
                             "--extractor", "effnetlite0", "--image-size", "64", "--out", str(out), "--shard-size",
                             "4", "--batch-size", "2", "--workers", "1", "--threads", "1", "--no-progress"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / ".butd.lock").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / ".butd.lock").exists()  # the file stays; the kernel dropped the lock with its process
    r = _extract(photos, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _records(out) == _records(clean_store)


def test_extract_on_a_full_disk_then_rerun(photos, clean_store, tmp_path):
    with _tmpfs(tmp_path / "small", "150k") as fs:
        out = fs / "store"
        line = _one_error(_extract(photos, out), 1, "no space left on the device", "free space and rerun")
        _no_tmp(out)
        _grow(fs, "64m")
        r = _extract(photos, out)  # the same command
        assert r.returncode == 0, r.stderr[-2000:]
        assert verify_store(out, progress=False).ok and _records(out) == _records(clean_store), line
        _no_tmp(out)


def test_extract_into_a_read_only_out(photos, tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as fs:
        _one_error(_extract(photos, fs / "store"), 1, "read-only", str(fs / "store"))
        assert not (fs / "store").exists()


def test_extract_disk_full_injected(photos, clean_store, tmp_path, monkeypatch):
    """The same path without a mount: LMDB's commit fails as it does on a full disk (an I/O error), and the
    file system has no space left; in process, through the real command."""
    import lmdb
    from click.testing import CliRunner

    import butd.shards.diskio as diskio
    from butd.cli import main
    from butd.shards.writer import ShardWriter

    real, calls = ShardWriter._commit_shard, {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise lmdb.Error("mdb_txn_commit: Input/output error")
        return real(self)

    monkeypatch.setattr(ShardWriter, "_commit_shard", failing)
    monkeypatch.setattr(diskio.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    out = tmp_path / "store"
    args = ["extract", "--dataset", "folder", "--root", str(photos), "--extractor", "effnetlite0", "--image-size",
            "64", "--out", str(out), "--shard-size", "4", "--batch-size", "2", "--workers", "1", "--threads", "1",
            "--no-progress"]
    r = CliRunner().invoke(main, args)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert r.exit_code == 1 and errors == [f"Error: no space left on the device ({out}): free space and rerun "
                                           "the same command"], r.output
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "shard-00000.lmdb"]
    monkeypatch.setattr(ShardWriter, "_commit_shard", real)
    monkeypatch.undo()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert _records(out) == _records(clean_store)


def test_extract_when_out_vanishes_mid_run(photos, clean_store, tmp_path, monkeypatch):
    """Someone removes --out while the store is written (between two shards): one line, exit 1, no traceback,
    and the same command rerun makes the whole store again."""
    import shutil

    from click.testing import CliRunner

    from butd.cli import main
    from butd.shards.writer import ShardWriter

    real, calls = ShardWriter._commit_shard, {"n": 0}
    out = tmp_path / "store"

    def vanishing(self):
        calls["n"] += 1
        if calls["n"] == 2:
            shutil.rmtree(out)
        return real(self)

    monkeypatch.setattr(ShardWriter, "_commit_shard", vanishing)
    args = ["extract", "--dataset", "folder", "--root", str(photos), "--extractor", "effnetlite0", "--image-size",
            "64", "--out", str(out), "--shard-size", "4", "--batch-size", "2", "--workers", "1", "--threads", "1",
            "--no-progress"]
    r = CliRunner().invoke(main, args)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.output
    assert str(out) in errors[0] and "rerun the same command" in errors[0], errors
    monkeypatch.undo()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert verify_store(out, progress=False).ok and _records(out) == _records(clean_store)
    _no_tmp(out)


def _caption_world(tmp_path: Path, n_images: int = 16, **config: object) -> list[str]:
    """A toy world with its oracle store and a tiny caption config: the `butd train` arguments without --out."""
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    toy = tmp_path / "toy"
    make_toy_world(toy, ToyConfig(n_images=n_images, seed=2))
    store = write_oracle_store(toy, tmp_path / "store", dim=32)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_CAPTION, **config}))
    return ["train", "--model", "updown", "--features", str(store), "--captions", str(toy / "dataset_coco.json"),
            "--config", str(cfg), "--device", "cpu"]


def test_checkpoint_on_a_full_disk_then_resume(tmp_path):
    from butd.train.checkpoint import load_checkpoint

    args = [*_caption_world(tmp_path), "--epochs", "2"]
    ref = _butd(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    size = (tmp_path / "ref" / "xe" / "checkpoints" / "last.pt").stat().st_size
    with _tmpfs(tmp_path / "small", f"{(5 * size // 2) // 1024}k") as fs:  # epoch 1's best and last fit, no more
        run = fs / "run"
        line = _one_error(_butd(*args, "--out", run), 1, "no space left on the device", "--resume")
        _no_tmp(run)
        _grow(fs, "64m")
        r = _butd(*args, "--out", run, "--resume")
        assert r.returncode == 0, r.stderr[-2000:]
        a, b = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(tmp_path / "ref" / "checkpoints"
                                                                                 / "best.pt")
        assert a.model.keys() == b.model.keys() and all((a.model[k] == b.model[k]).all() for k in a.model), line


def test_two_trainers_on_one_run(tmp_path):
    run = tmp_path / "run"
    args = [*_caption_world(tmp_path), "--out", str(run)]
    first = subprocess.Popen([sys.executable, "-m", "butd", *args, "--epochs", "500"], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "xe" / "checkpoints" / "last.pt").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    try:
        for extra in (["--resume"], ["--overwrite"], []):  # whatever the second one asks, the run is taken
            line = _one_error(_butd(*args, "--epochs", "2", *extra), 1, "another butd process is writing this run",
                              f"pid {first.pid}")
            assert "rerun the same command" in line
        assert first.poll() is None  # the first trainer was not disturbed
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: it saves where it is
        first.communicate(timeout=120)
    assert first.returncode == 130 and not (run / ".butd.lock").exists()
    r = _butd(*args, "--epochs", "2", "--resume")  # the lock went with its holder
    assert r.returncode == 0, r.stderr[-2000:]


def test_ddp_batch_of_every_phase_is_checked_before_any_work(tmp_path):
    args = _caption_world(tmp_path, 8, scst={"epochs": 1, "batch_size": 25})
    t0 = time.perf_counter()
    r = _butd(*args, "--out", tmp_path / "run", "--nproc", "2")
    _one_error(r, 2, "batch_size 25 (the global batch) does not divide over 2 processes", "scst.batch_size")
    assert not (tmp_path / "run").exists() and "OMP_NUM_THREADS" not in r.stderr
    assert time.perf_counter() - t0 < 60  # refused at start, not after the XE phase
