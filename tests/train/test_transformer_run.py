"""`butd train --model transformer` through the shared trainer: XE with the Noam schedule then SCST, box geometry
from a real extractor's region store, `butd caption` / `butd report` (with its attention), exact resume, and
the settings mistakes as one line from the real command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from butd.cli import main
from butd.train.caption import CaptionPaths, load_caption_config, train_caption

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = {"d_model": 16, "d_ff": 32, "heads": 2, "enc_layers": 1, "dec_layers": 2, "dropout": 0.1, "feat_dropout": 0.1}
NOAM = {"name": "noam", "unit": "steps", "warmup": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A toy world and an effnetlite0 region store of its given boxes (64 px input), extracted in-process."""
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.extract.registry import build_extractor, extractor_config
    from butd.extract.runner import manifest_entry
    from butd.extract.single import extract_files
    from butd.extract.sources import iter_source
    from butd.shards import ShardWriter

    root = tmp_path_factory.mktemp("transformer")
    make_toy_world(root / "toy", ToyConfig(n_images=24, seed=7))
    cfg = extractor_config("effnetlite0", mode="boxes", image_size=64, device="cpu")
    ex = build_extractor("effnetlite0", cfg)
    entry = manifest_entry(dataclasses.asdict(cfg), {"name": "effnetlite0", "details": ex.config_dict(),
                                                     "weights_sha256": ex.weights_sha256})
    items = list(iter_source("toy", root / "toy", mode="boxes"))
    with ShardWriter(root / "store", "region", extractor=entry,
                     source={"dataset": "toy", "root": str(root / "toy")}) as writer:
        for item, (rec, _) in zip(items, extract_files(entry, [it.path for it in items],
                                                       boxes=[it.boxes for it in items])):
            writer.add(item.image_id, rec)
    return root


def _ok(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_train_caption_and_report_with_box_geometry(world, tmp_path):
    cfg = {"model": {**TINY, "geometry": True}, "data": {"min_count": 1, "boxes": True},
           "xe": {"batch_size": 16, "log_every": 0, "schedule": NOAM}, "scheduled_sampling": {"start": -1},
           "scst": {"batch_size": 8, "log_every": 0}, "scst_objective": {"baseline": "mean", "samples": 2},
           "adam_betas": [0.9, 0.98], "adam_eps": 1e-9}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    _ok(["train", "--model", "transformer", "--features", str(world / "store"), "--out", str(run), "--epochs", "1",
         "--scst-epochs", "1", "--captions", str(world / "toy" / "dataset_coco.json"), "--config",
         str(tmp_path / "c.yaml")])
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "transformer" and set(info["summary"]["phases"]) == {"xe", "scst"}
    photos = sorted((world / "toy").rglob("*.jpg"))[:2]  # new photos: the run's extractor, proposal-grid boxes
    out = _ok(["caption", str(run), *map(str, photos), "--beam", "2"])
    assert [ln.split("\t")[0] for ln in out.splitlines() if "\t" in ln] == list(map(str, photos))
    out = _ok(["report", str(run), "--n", "2", "--out", str(tmp_path / "r.html")])
    assert (tmp_path / "r.html").is_file() and "(2 images, pictures embedded)" in out

    from butd.tasks.caption import report_items

    items = report_items(run, n=4)
    assert sum(len(item.attention) for item in items) > 0
    for item in items:  # one map per word over the image's boxes: the last layer's cross-attention, head mean
        assert [w for w, _ in item.attention] == dict(item.lines)["caption"].split()
        assert all(a.shape == (len(item.boxes),) and np.isclose(a.sum(), 1.0, atol=1e-5) for _, a in item.attention)


def _losses(run: Path) -> list[tuple[str, int, float]]:
    out = []
    for phase in ("xe", "scst"):
        for line in (run / phase / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "train":
                out.append((phase, rec["step"], rec["loss"], rec["lr"]))
    return out


def test_resume_mid_xe_gives_the_same_losses(world, tmp_path):
    def cfg(xe_steps: int = 0):
        loop = {"batch_size": 16, "log_every": 1, "grad_clip": 0.1, "clip_mode": "value"}
        return load_caption_config(None, {
            "model_name": "transformer", "model": TINY, "data": {"min_count": 1}, "device": "cpu",
            "adam_betas": [0.9, 0.98], "adam_eps": 1e-9, "scheduled_sampling": {"start": -1},
            "xe": {**loop, "epochs": 2, "lr": 1e-3, "schedule": NOAM, "max_steps": xe_steps},
            "scst": {**loop, "epochs": 1, "lr": 1e-4, "batch_size": 8}, "scst_objective": {"samples": 2}})

    paths = CaptionPaths(str(world / "store"), str(world / "toy" / "dataset_coco.json"))
    train_caption(cfg(), paths, tmp_path / "straight", echo=None)
    train_caption(cfg(xe_steps=3), paths, tmp_path / "cut", echo=None)
    (tmp_path / "cut" / "scst").rename(tmp_path / "cut" / "scst-discarded")  # as if killed before SCST began
    train_caption(cfg(), paths, tmp_path / "cut", resume=True, echo=None)
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "cut")
    assert len(straight) >= 4 and {p for p, *_ in straight} == {"xe", "scst"}
    assert dict(((p, s), (v, lr)) for p, s, v, lr in resumed) == dict(((p, s), (v, lr)) for p, s, v, lr in straight)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "butd", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _config(tmp_path: Path, settings: dict) -> Path:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"min_count": 1}, "xe": {"log_every": 0}, **settings}))
    return tmp_path / "c.yaml"


def _train_args(world: Path, out: Path, config: Path) -> list[str]:
    return ["train", "--model", "transformer", "--features", str(world / "store"), "--out", str(out),
            "--epochs", "1", "--captions", str(world / "toy" / "dataset_coco.json"), "--device", "cpu",
            "--config", str(config)]


def test_geometry_without_box_columns_stops_with_one_line(world, tmp_path):
    """The real command (a subprocess): exit 2, one line, no traceback."""
    config = _config(tmp_path, {"model": {**TINY, "geometry": True}})
    r = _cli(_train_args(world, tmp_path / "run", config), tmp_path)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0] == ("Error: model.geometry needs the region boxes in the features (data.boxes): "
                        "set data.boxes: true (region stores only)")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("settings,message", [
    ({"model": {**TINY, "heads": 3}}, "Error: d_model 16 is not a multiple of heads 3 (model)"),
    ({"model": TINY, "xe": {"schedule": {"name": "noam", "warmup": 0}}},
     "Error: the noam schedule needs a warmup (loop.schedule.warmup)"),
    ({"model": TINY, "data": {"boxes": True}},
     "Error: the features carry box columns (data.boxes) but model.geometry is off (model)"),
])
def test_settings_mistakes_stop_with_one_line(world, tmp_path, settings, message):
    r = CliRunner().invoke(main, _train_args(world, tmp_path / "run", _config(tmp_path, settings)))
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(message), r.output


def test_two_processes_train_the_weights_of_one(world, tmp_path):
    """DDP unchanged: 2 processes x half the batch end with one process's weights (tolerance: test_distributed).

    The key biases get an exactly-zero true gradient (q . b_k shifts all of a query's scores alike), so their
    updates are rounding noise that Adam scales up; they are left out and the outputs compared instead."""
    import torch

    from butd.models.registry import build_caption_model
    from butd.train.checkpoint import load_checkpoint

    settings = {"model": {**TINY, "dropout": 0.0, "feat_dropout": 0.0}, "data": {"min_count": 1},
                "adam_betas": [0.9, 0.98], "adam_eps": 1e-9, "scheduled_sampling": {"start": -1},
                "xe": {"batch_size": 4, "log_every": 1, "lr": 1e-3, "schedule": NOAM}}
    config = _config(tmp_path, settings)
    r = _cli([*_train_args(world, tmp_path / "two", config), "--nproc", "2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    one = load_caption_config(config, {"model_name": "transformer", "device": "cpu", "xe": {"epochs": 1}})
    train_caption(one, CaptionPaths(str(world / "store"), str(world / "toy" / "dataset_coco.json")), tmp_path / "one",
                  echo=None)
    a = load_checkpoint(tmp_path / "one" / "xe" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "xe" / "checkpoints" / "last.pt")
    assert a.step == b.step == 4 and b.meta["world_size"] == 2  # 16 train images / 4 images a step (x 5 captions)
    for name, w in a.model.items():
        if not name.endswith(".k.bias"):
            torch.testing.assert_close(b.model[name], w, rtol=0, atol=2e-5, msg=name)
    nets = []
    for ckpt in (a, b):
        nets.append(build_caption_model("transformer", len(a.meta["vocab"]), a.meta["feature_dim"], settings["model"]))
        nets[-1].load_state_dict(ckpt.model)
    gen = torch.Generator().manual_seed(0)
    batch = {"features": torch.randn(4, 6, a.meta["feature_dim"], generator=gen),
             "mask": torch.ones(4, 6, dtype=torch.bool),
             "captions": torch.randint(1, len(a.meta["vocab"]), (4, 9), generator=gen)}
    with torch.no_grad():
        torch.testing.assert_close(nets[1].eval()(batch)["logits"], nets[0].eval()(batch)["logits"], rtol=0, atol=2e-5)
