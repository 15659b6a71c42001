"""DDP training on CPU (gloo, loopback only): the same results as one process, SCST rewards, kill + resume.

Tolerance of the weight comparison: 2 processes x batch B/2 and 1 process x batch B see the same samples
per step and the same token-weighted loss, but the gradient is summed in a different order (each rank sums
its half, then gloo's all-reduce adds the halves), and float32 addition is not associative. The difference
is a few ulp per step (~1e-7 relative), which Adam carries over K steps; measured <= 3e-6 after K = 10
steps on weights of magnitude ~0.1-4, so we allow 2e-5 absolute (a wrong split, a missing loss weight or a
doubled step moves them by 1e-4 or more). One parameter has no true gradient at all (SHIFT_INVARIANT below).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from butd.evaluate.cider import CiderD
from butd.train import distributed as ddp
from butd.train.caption import CaptionPaths, load_caption_config, train_caption
from butd.train.checkpoint import load_checkpoint

HERE = Path(__file__).parent
CFG = {"model_name": "updown", "model": {"embed_dim": 32, "hidden_dim": 48, "att_dim": 16, "dropout": 0.0},
       "data": {"min_count": 2}, "device": "cpu",
       "xe": {"batch_size": 4, "grad_clip": 1.0,  # images x 5 captions
              "log_every": 1, "epochs": 2, "lr": 5e-3, "monitor": "CIDEr-D"},
       "scst": {"batch_size": 8, "grad_clip": 1.0, "log_every": 1, "epochs": 3, "lr": 5e-4, "monitor": "CIDEr-D",
                "checkpoint_every": 1}}


# The bias of the scalar attention logit gets an exactly-zero true gradient (softmax ignores a shift), so
# its gradient is pure rounding noise, which Adam normalises into lr-sized steps: it differs between any
# two summation orders and is left out of the weight comparison (the outputs are compared instead).
SHIFT_INVARIANT = {"w_a.bias"}


def _train_losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "xe" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["kind"] == "train"]


def _env() -> dict[str, str]:
    src = str(Path(ddp.__file__).resolve().parents[2])
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[CaptionPaths, Path]:
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    root = tmp_path_factory.mktemp("toyddp")
    make_toy_world(root, ToyConfig(n_images=24, seed=1))  # 16 train images, 80 pairs
    paths = CaptionPaths(str(write_oracle_store(root, root / "store", dim=32)), str(root / "dataset_coco.json"))
    (root / "cfg.yaml").write_text(yaml.safe_dump(CFG), encoding="utf-8")
    return paths, root / "cfg.yaml"


def _train_cmd(toy, out: Path, *extra: str) -> list[str]:
    paths, cfg = toy
    return [sys.executable, "-m", "butd", "train", "--model", "updown", "--nproc", "2", "--features", paths.features,
            "--captions", paths.captions, "--out", str(out), "--config", str(cfg), *extra]


@pytest.fixture(scope="module")
def run2(toy, tmp_path_factory) -> Path:
    """An uninterrupted 2-process run: XE then SCST."""
    out = tmp_path_factory.mktemp("ddp") / "run2"
    proc = subprocess.run(_train_cmd(toy, out), env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1, "only rank 0 prints"
    return out


# ------------------------------------------------------------------------------------------ in-process units
@pytest.mark.parametrize("n", [40, 37])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_split_each_global_batch_of_one_process(n, world):
    batch = 12
    if batch % world:
        pytest.skip("global batch must divide")
    single = ddp.ShardedEpochSampler(n, seed=5)
    ranks = [ddp.ShardedEpochSampler(n, seed=5, rank=r, world_size=world) for r in range(world)]
    for skip_steps in (0, 2):
        for s in [single, *ranks]:
            s.set_epoch(3, skip=skip_steps * batch)
        whole = list(single)
        parts = [list(s) for s in ranks]
        assert len({len(p) for p in parts}) == 1 and all(len(p) == len(s) for p, s in zip(parts, ranks))
        local = batch // world
        for k in range(0, len(parts[0]), local):  # step k: the union of rank batches is the 1-process batch
            union = sorted(i for p in parts for i in p[k : k + local])
            expect = whole[k * world : k * world + batch]
            if len(expect) == batch:
                assert union == sorted(expect)
        padded = [i for p in parts for i in p]
        # every remaining sample is seen; padding (repeats of the epoch's head) stays below one round
        assert set(whole) <= set(padded) and 0 <= len(padded) - len(whole) < world


def test_global_batch_must_divide_over_ranks():
    assert ddp.per_rank_batch(16, 2) == 8
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        ddp.per_rank_batch(16, 3)


def test_torchrun_worker_without_a_process_group_refuses_to_train(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; no init_process_group was called
    with pytest.raises(ValueError, match="no process group"):
        ddp.current()


def test_cider_shared_as_arrays_scores_identically(toy):
    refs = [["a red square on the left", "a red box"], ["two blue circles", "blue circles here"], ["a cat"]]
    scorer = CiderD(refs)
    copy = CiderD.from_arrays(scorer.to_arrays())
    cands = ["a red square", "blue circles", "a dog on the left"]
    assert scorer.score_lists(cands, refs)[1].tolist() == copy.score_lists(cands, refs)[1].tolist()


# ------------------------------------------------------------------------------------------ 2 processes
def test_xe_weights_two_processes_half_batch_equal_one_process_full_batch(toy, run2, tmp_path, one_torch_thread):
    paths, _ = toy
    cfg = load_caption_config(None, {**CFG, "scst": {**CFG["scst"], "epochs": 0}})
    train_caption(cfg, paths, tmp_path / "one", echo=None)
    one = load_checkpoint(tmp_path / "one" / "xe" / "checkpoints" / "last.pt")
    two = load_checkpoint(run2 / "xe" / "checkpoints" / "last.pt")
    assert one.step == two.step == 8 and two.meta["world_size"] == 2  # K = 2 epochs x 16 images / 4 (x 5 captions)
    for name, w in one.model.items():
        if name not in SHIFT_INVARIANT:
            torch.testing.assert_close(two.model[name], w, rtol=0, atol=2e-5, msg=name)
    # ... and so are the model's outputs, which the shift-invariant bias cannot change
    from butd.models.registry import build_caption_model

    nets = []
    for weights in (one.model, two.model):
        net = build_caption_model("updown", len(one.meta["vocab"]), one.meta["feature_dim"], CFG["model"])
        net.load_state_dict(weights)
        nets.append(net.eval())
    gen = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(4, 6, one.meta["feature_dim"], generator=gen),
             "mask": torch.ones(4, 6, dtype=torch.bool),
             "captions": torch.randint(1, len(one.meta["vocab"]), (4, 9), generator=gen)}
    with torch.no_grad():
        torch.testing.assert_close(nets[1](batch)["logits"], nets[0](batch)["logits"], rtol=0, atol=2e-5)
    # the logged loss is the global token mean on both
    assert _train_losses(tmp_path / "one") == pytest.approx(_train_losses(run2), abs=1e-5)


def test_scst_rewards_identical_on_two_processes(toy, tmp_path, one_torch_thread):
    paths, _ = toy
    worker = str(HERE / "ddp_scst_worker.py")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    spec = importlib.util.spec_from_file_location("ddp_scst_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(paths.features, paths.captions, str(one))  # one process: this one
    code = ("import sys; from butd.train.launch import launch_local; "
            f"sys.exit(launch_local(2, [{worker!r}, {paths.features!r}, {paths.captions!r}, {str(two)!r}], None))")
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, timeout=120)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert len({r["df_sha256"] for r in a["ranks"] + b["ranks"]}) == 1  # one df table, on every rank
    rows_a = {r["index"]: r for r in a["ranks"][0]["rows"]}
    rows_b = {r["index"]: r for part in b["ranks"] for r in part["rows"]}
    assert len(rows_a) == 8 and sorted(rows_a) == sorted(rows_b)
    assert {r["rank"] for r in rows_b.values()} == {0, 1}  # each rank scored its own images
    for i, row in rows_a.items():
        assert rows_b[i]["rewards"] == row["rewards"] and rows_b[i]["greedy_reward"] == row["greedy_reward"]


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _workers(pid: int) -> list[int]:
    """The training processes under a `butd train --nproc` (not the command itself, not the launcher)."""
    out = []
    for p in _tree(pid):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"butd" in argv and b"train" in argv and b"--nproc" not in argv and b"butd.train.launch" not in argv:
            out.append(p)
    return out


def _tcp_endpoints(pids: list[int]) -> set[tuple[str, str, str]]:
    """(local, remote, state) hex address pairs of every TCP socket the processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                found.add((f[1].rsplit(":", 1)[0], f[2].rsplit(":", 1)[0], f[3]))
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def killed(toy, tmp_path_factory) -> tuple[Path, set]:
    """A 2-process run whose rank 1 is SIGKILLed during SCST; TCP endpoints seen while it ran."""
    out = tmp_path_factory.mktemp("ddpkill") / "run"
    proc = subprocess.Popen(_train_cmd(toy, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    seen: set = set()
    metrics, deadline = out / "scst" / "metrics.jsonl", time.time() + 200
    try:
        while time.time() < deadline and proc.poll() is None:
            seen |= _tcp_endpoints(_tree(proc.pid))
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()] if metrics.exists() else []
            if steps and max(steps) >= 3:
                os.kill(max(_workers(proc.pid)), signal.SIGKILL)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "Error: worker rank" in err
    return out, seen


def test_two_process_run_binds_and_talks_only_over_loopback(killed):
    _, seen = killed
    assert any(state == "0A" for _, _, state in seen), "no listening socket seen: the check saw nothing"
    assert any(state == "01" for _, _, state in seen), "no connection seen: the check saw nothing"
    for local, remote, state in seen:
        assert local in LOOPBACK, f"socket bound to non-loopback address {local} (state {state})"
        assert state == "0A" or remote in LOOPBACK, f"connection to non-loopback address {remote}"


@pytest.mark.slow
def test_resume_after_a_killed_rank_finishes_like_an_uninterrupted_run(toy, run2, killed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed[0], out)
    assert (out / "scst" / "checkpoints" / "last.pt").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "training"  # killed: not finished
    proc = subprocess.run(_train_cmd(toy, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((run / "run.json").read_text())["summary"] for run in (run2, out))
    assert b["val_cider_d"] == a["val_cider_d"] and b["phases"]["scst"]["step"] == a["phases"]["scst"]["step"]

    def epochs(run: Path) -> list[dict]:
        lines = [json.loads(x) for x in (run / "scst" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in lines if r["kind"] == "epoch"]

    assert epochs(out) == epochs(run2)

    def steps(run: Path) -> dict[int, float]:
        lines = [json.loads(x) for x in (run / "scst" / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}

    assert steps(out) == steps(run2)  # the steps redone after the kill repeat the uninterrupted run's losses
    final_a, final_b = (load_checkpoint(run / "checkpoints" / "best.pt").model for run in (run2, out))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_on_another_number_of_processes_says_so(toy, killed, tmp_path, one_torch_thread):
    paths, cfg_file = toy
    out = tmp_path / "run"
    shutil.copytree(killed[0], out)
    said: list[str] = []
    cfg = load_caption_config(cfg_file)
    summary = train_caption(cfg, paths, out, resume=True, echo=said.append)
    assert any("checkpointed by 2 process(es) on 1" in s for s in said)
    assert summary["world_size"] == 1 and summary["phases"]["scst"]["step"] > 0


def test_ranks_started_without_nproc_still_guard_out_and_print_once(toy, run2, tmp_path):
    """Ranks started by the elastic launcher directly (as `torchrun -m butd train` does, here bound to
    127.0.0.1): rank 0 refuses a used --out as the single-process command does, and the device line and
    the final line appear once, not once per rank."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine", encoding="utf-8")
    args = _train_cmd(toy, used)
    i = args.index("--nproc")
    args = args[args.index("train") : i] + args[i + 2 :]
    cmd = [sys.executable, "-m", "butd.train.launch", "2", "butd", *args]
    env = {k: v for k, v in _env().items() if k != "BUTD_NPROC_LAUNCHED"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Error:" in proc.stderr and "--out" in proc.stderr
    assert [p.name for p in used.iterdir()] == ["notes.txt"] and (used / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    proc = subprocess.run([*cmd[: cmd.index(str(used))], str(fresh), *cmd[cmd.index(str(used)) + 1 :]], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("device: ") == 1 and proc.stdout.count("wrote ") == 1
