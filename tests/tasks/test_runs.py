"""One run format for both tasks (RUNS.md); a run moved to another directory, or used from another working
directory, still evaluates; data that moved on its own is found again with --features/--captions/--questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from butd.cli import main
from butd.tasks import task_module
from butd.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _caption_run(root: Path) -> Path:
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    make_toy_world(root / "toy", ToyConfig(n_images=30, seed=3))
    store = write_oracle_store(root / "toy", root / "store", dim=32)
    (root / "c.yaml").write_text(yaml.safe_dump({"model": {"embed_dim": 8, "hidden_dim": 16, "att_dim": 8},
                                                 "data": {"min_count": 1}, "xe": {"batch_size": 16, "log_every": 0}}))
    options = {"features": store, "captions": root / "toy" / "dataset_coco.json", "epochs": 1, "device": "cpu"}
    task_module("caption").train("updown", options, root / "run", config=root / "c.yaml", echo=None)
    return root / "run"


def _vqa_run(root: Path) -> Path:
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    make_toy_world(root / "toy", ToyConfig(n_images=24, seed=4))
    store = write_oracle_store(root / "toy", root / "store", dim=32)
    v = root / "toy" / "vqa"
    (root / "c.yaml").write_text(yaml.safe_dump({"model": {k: 8 for k in ("word_dim", "hidden_dim", "attention_dim",
                                                                            "joint_dim", "classifier_dim")},
                                                 "loop": {"batch_size": 16, "log_every": 0}}))
    options = {"features": store, "questions": [v / "v2_OpenEnded_mscoco_train2014_questions.json"],
               "annotations": [v / "v2_mscoco_train2014_annotations.json"],
               "val_questions": [v / "v2_OpenEnded_mscoco_val2014_questions.json"],
               "val_annotations": [v / "v2_mscoco_val2014_annotations.json"],
               "epochs": 1, "min_answer_count": 1, "device": "cpu"}
    task_module("vqa").train("vqa", options, root / "run", config=root / "c.yaml", echo=None)
    return root / "run"


MAKERS = {"caption": _caption_run, "vqa": _vqa_run}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return {task: make(tmp_path_factory.mktemp(task)) for task, make in MAKERS.items()}


def test_both_tasks_write_the_same_run_format(runs):
    infos = {t: json.loads((r / "run.json").read_text()) for t, r in runs.items()}
    keys = {t: set(i) - {"summary", "data_report", "num_answers", "vocab_size"} for t, i in infos.items()}
    assert keys["caption"] == keys["vqa"] == {"format", "version", "task", "model", "data", "store", "vocab",
                                              "checkpoints", "world_size", "status", "skip_missing"}
    assert infos["caption"]["status"] == infos["vqa"]["status"] == "finished"
    for task, run in runs.items():
        info = infos[task]
        assert info["task"] == task and info["format"] == "butd-run"
        assert set(info["store"]) == {"kind", "feature_dim", "dims", "extractor", "manifest_sha256"}
        assert all(Path(e["path"]).is_absolute() and not Path(e["relative"]).is_absolute()
                   for e in info["data"].values() if isinstance(e, dict))
        vocab = json.loads((run / "vocab.json").read_text())
        assert set(vocab) == {"format", "version", "kind", "words"} and vocab["format"] == "butd-vocab"
        for which in ("best", "last"):
            assert info["checkpoints"][which] == f"checkpoints/{which}.pt"
            meta = load_checkpoint(run / "checkpoints" / f"{which}.pt").meta
            assert {"task", "model", "config", "vocab", "feature_dim", "store"} <= set(meta)
            assert meta["store"]["manifest_sha256"] == info["store"]["manifest_sha256"]


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_a_moved_run_works_from_another_working_directory(runs, task, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(runs[task].parent, moved)  # the run with its data, as a user moves a project folder
    monkeypatch.chdir(tmp_path)  # neither the old nor the new folder
    mod = task_module(task)
    result = mod.evaluate(moved / "run", mod.SPLIT, device="cpu", **({"beam": 1} if task == "caption" else {}))
    assert (moved / "run" / f"eval_{mod.SPLIT}.json").is_file() and result


@pytest.mark.parametrize("task", sorted(MAKERS))
def test_data_that_moved_alone_is_named_then_found_with_overrides(runs, task, tmp_path):
    """Last in this module: it moves the fixture's store away, so neither recorded path finds it."""
    run = runs[task]
    shutil.move(run.parent / "store", tmp_path / "store-new")
    beam = ["--beam", "1"] if task == "caption" else []
    r = CliRunner().invoke(main, ["eval", str(run), *beam, "--device", "cpu"])
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("device:")]
    assert r.exit_code == 1 and len(lines) == 1
    assert lines[0].startswith("Error: a file the run was trained on is gone (") and "pass --features" in lines[0]
    r = CliRunner().invoke(main, ["eval", str(run), *beam, "--device", "cpu",
                                  "--features", str(tmp_path / "store-new")])
    assert r.exit_code == 0, r.output
