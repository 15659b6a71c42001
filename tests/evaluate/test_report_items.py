"""A VQA report built from a real (tiny) run: top-5 answers, human answers, marks, per-type accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from butd.datasets.toy import ToyConfig, make_toy_world
from butd.datasets.toy_features import write_oracle_store
from butd.evaluate.report import write_report
from butd.tasks.vqa import report_items
from butd.train.vqa import VQAPaths, load_config, train_vqa

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_vqa_report_of_a_trained_run(tmp_path: Path) -> None:
    make_toy_world(tmp_path / "toy", ToyConfig(n_images=24, seed=0))
    write_oracle_store(tmp_path / "toy", tmp_path / "store", dim=64, seed=0, noise=0.1)
    v = tmp_path / "toy" / "vqa"
    paths = VQAPaths(features=str(tmp_path / "store"),
                     questions=(str(v / "v2_OpenEnded_mscoco_train2014_questions.json"),),
                     annotations=(str(v / "v2_mscoco_train2014_annotations.json"),),
                     val_questions=(str(v / "v2_OpenEnded_mscoco_val2014_questions.json"),),
                     val_annotations=(str(v / "v2_mscoco_val2014_annotations.json"),))
    small = dict.fromkeys(("word_dim", "hidden_dim", "attention_dim", "joint_dim", "classifier_dim"), 16)
    cfg = load_config(None, {"model": small, "data": {"min_answer_count": 1},
                             "loop": {"epochs": 1, "batch_size": 16, "log_every": 0}})
    train_vqa(cfg, paths, tmp_path / "run", echo=None)
    items = report_items(tmp_path / "run", "val", 6, None)
    assert len(items) == 6
    for item in items:
        assert len(item.answers) == 5 and all(0 <= s <= 1 for _, s in item.answers)
        assert [s for _, s in item.answers] == sorted((s for _, s in item.answers), reverse=True)
        assert len(item.truth) == 10 and item.answer_type in {"yes/no", "number", "other"}
        label, weights = item.attention[0]
        assert label.startswith("Q: ") and f"A: {item.answers[0][0]}" in label
        assert len(weights) == len(item.boxes) == len(item.box_labels)
    page = write_report(items, tmp_path / "vqa.html").read_text()
    n_images = len({i.image_path for i in items})
    assert f"6 questions on {n_images} image" in page
    assert len(re.findall(r"<h2>q\d+ <span class=\"(right|wrong|partly)\">", page)) == 6
    assert page.count("<th>answer type</th>") == 1
