"""An interrupted caption run, resumed, continues exactly: the same losses as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from butd.train.caption import CaptionPaths, load_caption_config, train_caption


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> CaptionPaths:
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    root = tmp_path_factory.mktemp("toyresume")
    make_toy_world(root, ToyConfig(n_images=40, seed=1))
    return CaptionPaths(str(write_oracle_store(root, root / "store", dim=32)), str(root / "dataset_coco.json"))


def _cfg(xe_steps: int = 0, scst_steps: int = 0):
    loop = {"batch_size": 16, "grad_clip": 1.0, "log_every": 1, "monitor": "CIDEr-D"}
    return load_caption_config(None, {
        "model_name": "updown", "model": {"embed_dim": 32, "hidden_dim": 48, "att_dim": 16, "dropout": 0.2},
        "data": {"min_count": 2}, "device": "cpu",
        "xe": {**loop, "epochs": 2, "lr": 5e-3, "max_steps": xe_steps, "batch_size": 3},  # 3 images x 5 captions
        "scst": {**loop, "epochs": 1, "lr": 5e-4, "max_steps": scst_steps, "batch_size": 8}})


def _losses(run: Path) -> list[tuple[str, int, float]]:
    out = []
    for phase in ("xe", "scst"):
        for line in (run / phase / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "train":
                out.append((phase, rec["step"], rec["loss"]))
    return out


@pytest.mark.parametrize("stop_in", ["xe", "scst"])
def test_resume_gives_the_same_losses(toy, tmp_path, stop_in):
    train_caption(_cfg(), toy, tmp_path / "straight", echo=None)
    cut = tmp_path / "cut"
    if stop_in == "xe":  # interrupted mid-XE (step 3 of 6), then resumed without a budget
        train_caption(_cfg(xe_steps=3, scst_steps=1), toy, cut, echo=None)
        (cut / "scst").rename(cut / "scst-discarded")  # as if killed before SCST began
    else:  # interrupted after 2 SCST steps
        train_caption(_cfg(scst_steps=2), toy, cut, echo=None)
    train_caption(_cfg(), toy, cut, resume=True, echo=None)
    straight, resumed = _losses(tmp_path / "straight"), _losses(cut)
    assert len(straight) >= 8
    keys = [(p, s) for p, s, _ in resumed]
    assert len(keys) == len(set(keys)), "the resumed invocation redid steps instead of continuing"
    assert dict(((p, s), v) for p, s, v in resumed) == dict(((p, s), v) for p, s, v in straight)
