"""`butd eval` beyond the COCO metrics: CHAIR, diagnostics and per-word grounding of a caption run, the
per-question regions and question types of a VQA run, and one line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from butd.evaluate.caption_metrics import CocoScorers
from butd.shards import FeatureStore, ShardWriter

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = {"embed_dim": 16, "hidden_dim": 32, "att_dim": 16}


def _butd(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "butd", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def _error_lines(res) -> list[str]:
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store
    from butd.train.caption import CaptionPaths, load_caption_config, train_caption

    root = tmp_path_factory.mktemp("evalchecks")
    make_toy_world(root / "toy", ToyConfig(n_images=40, seed=2))
    store = write_oracle_store(root / "toy", root / "store", dim=32)
    cfg = load_caption_config(None, {"model_name": "updown", "model": TINY, "data": {"min_count": 1},
                                     "device": "cpu", "xe": {"epochs": 1, "batch_size": 16, "log_every": 0}})
    torch.manual_seed(0)
    train_caption(cfg, CaptionPaths(str(store), str(root / "toy" / "dataset_coco.json")), root / "run", echo=None)
    return root


def test_caption_eval_reports_chair_diagnostics_and_grounding(caption_run):
    from butd.tasks.caption import evaluate, load_run

    run = caption_run / "run"
    lines: list[str] = []
    report = evaluate(run, "test", beam=1, scorers=CocoScorers.build(meteor=False, spice=False), attention=True,
                      echo=lines.append)
    assert {"CHAIR_s", "CHAIR_i", "object_recall", "mentions"} <= set(report["chair"])
    assert report["chair"]["words"] == "toy world shapes" and len(report["chair"]["instances"]) == 2
    assert {"repeat", "bad_ending", "mean_length", "vocabulary", "in_training"} <= set(report["diagnostics"])
    assert {"grounding_accuracy", "attention_correctness", "grounded_mentions"} <= set(report["grounding"])
    assert any(ln.strip().startswith("CHAIR-s") for ln in lines) and any("repeats" in ln for ln in lines)
    captions = {str(c["image_id"]): c for c in json.loads((run / "captions_test.json").read_text())}
    assert all(isinstance(c["hallucinated"], list) for c in captions.values())
    per_word = json.loads((run / "attention_test.json").read_text())
    assert set(per_word) == set(captions)
    store = FeatureStore(caption_run / "store")
    for image_id, item in per_word.items():
        assert item["caption"] == captions[image_id]["caption"]
        assert [w["word"] for w in item["words"]] == item["caption"].split()
        boxes = np.asarray(store[image_id]["boxes"])
        for w in item["words"]:
            assert 1 <= len(w["top"]) <= 3 and w["top"][0]["weight"] >= w["top"][-1]["weight"]
            assert np.allclose(w["top"][0]["box"], boxes[w["top"][0]["region"]], atol=0.01)
    # the recorded attention is the decoder's: greedy decoding gives the same weights
    from butd.datasets.captions import collate_captions
    from butd.models.decoding import greedy_decode
    from butd.tasks.caption import _attention, _dataset

    loaded = load_run(run)
    ds, _, _ = _dataset(loaded, "test", None, None)
    batch = collate_captions([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = greedy_decode(loaded.model, batch["features"], batch["mask"], loaded.config.decode.max_len)
    preds = {i: c["caption"] for i, c in captions.items()}
    forced = _attention(loaded, ds, preds)
    for b, image_id in enumerate(batch["image_ids"]):
        n, k = len(preds[image_id].split()), int(batch["mask"][b].sum())
        np.testing.assert_allclose(forced[image_id], out["attn"][b, :n, :k].numpy(), atol=1e-5)


def test_bad_inputs_end_in_one_line(caption_run, tmp_path):
    run, toy = caption_run / "run", caption_run / "toy"
    res = _butd("eval", run, "--device", "cpu", "--instances", toy / "annotations" / "captions_val2014.json")
    assert res.returncode == 2 and len(_error_lines(res)) == 1
    assert "not a COCO instances file" in _error_lines(res)[0]
    (tmp_path / "words.json").write_text('{"objects": [["dog"]]}')
    res = _butd("eval", run, "--device", "cpu", "--chair-words", tmp_path / "words.json")
    assert res.returncode == 2 and _error_lines(res) == [
        f'Error: not a CHAIR word file: no "format": "butd-chair-words" ({tmp_path / "words.json"}): give JSON '
        '{"format": "butd-chair-words", "objects": [["object", "synonym", ...], ...]} (README: CHAIR)']
    coco = tmp_path / "coco.json"  # the COCO list against the toy world's shape categories
    coco.write_text((Path(SRC) / "butd" / "evaluate" / "lists" / "chair_words.json").read_text())
    res = _butd("eval", run, "--device", "cpu", "--chair-words", coco)
    assert res.returncode == 2 and len(_error_lines(res)) == 1
    assert "instance category 'circle' is not in the CHAIR word list" in _error_lines(res)[0]  # (sorted: first)
    # a store whose boxes were zero-filled (an import without boxes)
    src = FeatureStore(caption_run / "store")
    with ShardWriter(tmp_path / "noboxes", "region") as w:
        for key in src.image_ids():
            rec = {k: np.array(v) for k, v in src[key].items()}
            rec["boxes"][:] = 0
            w.add(key, rec)
    res = _butd("eval", run, "--device", "cpu", "--attention", "--features", tmp_path / "noboxes")
    assert res.returncode == 2 and len(_error_lines(res)) == 1 and "boxes are all empty" in _error_lines(res)[0]
    res = _butd("eval", run, "--device", "cpu", "--vqa-eval", "master")
    assert res.returncode == 2 and "--vqa-eval is a vqa option" in _error_lines(res)[0]


def test_vqa_eval_gives_question_types_and_regions(tmp_path):
    from butd.datasets.toy_features import oracle_vqa_world
    from butd.tasks.vqa import evaluate
    from butd.train.vqa import VQAPaths, load_config, train_vqa

    paths = VQAPaths(**oracle_vqa_world(tmp_path, 30, dim=32))  # type: ignore[arg-type]
    small = {k: 16 for k in ("word_dim", "hidden_dim", "attention_dim", "joint_dim", "classifier_dim")}
    cfg = load_config(None, {"model": small, "data": {"min_answer_count": 1},
                             "loop": {"epochs": 1, "batch_size": 32, "log_every": 0}})
    train_vqa(cfg, paths, tmp_path / "run", echo=None)
    lines: list[str] = []
    res = evaluate(tmp_path / "run", "val", attention=True, echo=lines.append)
    assert set(res["per_question_type"]) <= {"is there a", "how many", "what color is the", "what shape is the"}
    assert sum(res["per_question_type_count"].values()) == res["num_questions"]
    assert any("per question type" in ln for ln in lines) and any(ln.strip().startswith("how many") for ln in lines)
    regions = json.loads((tmp_path / "run" / "attention_val.json").read_text())
    assert len(regions) == res["num_questions"]
    one = next(iter(regions.values()))
    assert {"image_id", "question", "top"} <= set(one) and 1 <= len(one["top"]) <= 3
