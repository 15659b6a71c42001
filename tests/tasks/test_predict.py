"""`butd caption`, `butd answer` and `butd report` on runs trained on a store made by a real extractor:
new images go through the extractor recorded in run.json, then the task's featurize, then the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from butd.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A toy world and an effnetlite0 grid store of it (64 px input: a 2x2 grid), extracted in-process."""
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.extract.registry import build_extractor, extractor_config
    from butd.extract.runner import manifest_entry
    from butd.extract.single import extract_files
    from butd.extract.sources import iter_source
    from butd.shards import ShardWriter

    root = tmp_path_factory.mktemp("predict")
    make_toy_world(root / "toy", ToyConfig(n_images=24, seed=6))
    cfg = extractor_config("effnetlite0", image_size=64, device="cpu")
    ex = build_extractor("effnetlite0", cfg)
    entry = manifest_entry(dataclasses.asdict(cfg), {"name": "effnetlite0", "details": ex.config_dict(),
                                                     "weights_sha256": ex.weights_sha256})
    items = list(iter_source("toy", root / "toy"))
    with ShardWriter(root / "store", "grid", extractor=entry,
                     source={"dataset": "toy", "root": str(root / "toy")}) as writer:
        for item, (rec, _) in zip(items, extract_files(entry, [it.path for it in items])):
            writer.add(item.image_id, rec)
    return root


def _ok(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_caption_and_report_with_the_runs_extractor(world, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"embed_dim": 8, "hidden_dim": 16, "att_dim": 8},
                                                     "data": {"min_count": 1}, "xe": {"log_every": 0}}))
    run = tmp_path / "run"
    _ok(["train", "--model", "sat-soft", "--features", str(world / "store"), "--out", str(run), "--epochs", "1",
         "--captions", str(world / "toy" / "dataset_coco.json"), "--config", str(tmp_path / "c.yaml")])
    photos = sorted((world / "toy").rglob("*.jpg"))[:2]
    out = _ok(["caption", str(run), *map(str, photos), "--beam", "2"])
    assert "device: " in out and [ln.split("\t")[0] for ln in out.splitlines() if "\t" in ln] == list(map(str, photos))
    out = _ok(["report", str(run), "--n", "2", "--out", str(tmp_path / "r.html")])
    assert (tmp_path / "r.html").is_file() and "(2 images, pictures embedded)" in out


def test_answer_and_report_with_the_runs_extractor(world, tmp_path):
    v = world / "toy" / "vqa"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {k: 8 for k in ("word_dim", "hidden_dim",
                                                                                "attention_dim", "joint_dim",
                                                                                "classifier_dim")},
                                                     "loop": {"batch_size": 16, "log_every": 0}}))
    run = tmp_path / "run"
    _ok(["train", "--model", "vqa", "--features", str(world / "store"), "--out", str(run), "--epochs", "1",
         "--questions", str(v / "v2_OpenEnded_mscoco_train2014_questions.json"),
         "--annotations", str(v / "v2_mscoco_train2014_annotations.json"),
         "--val-questions", str(v / "v2_OpenEnded_mscoco_val2014_questions.json"),
         "--val-annotations", str(v / "v2_mscoco_val2014_annotations.json"),
         "--min-answer-count", "1", "--config", str(tmp_path / "c.yaml")])
    photo = sorted((world / "toy").rglob("*.jpg"))[0]
    out = _ok(["answer", str(run), str(photo), "what color is the circle?", "--top", "3",
               "--png", str(tmp_path / "a.png")])
    assert len([ln for ln in out.splitlines() if ln[:1] == " " or ln[:1].isdigit()]) == 3
    assert "attention over the grid" in out and (tmp_path / "a.png").is_file()
    _ok(["report", str(run), "--n", "3", "--out", str(tmp_path / "v.html")])
    r = CliRunner().invoke(main, ["caption", str(run), str(photo)])
    assert r.exit_code == 2 and "this is a vqa run, not a caption run" in r.output
