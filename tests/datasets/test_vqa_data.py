"""VQA v2 loading, answer candidates, soft targets, store joining and the toy oracle store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from butd.datasets.toy import ToyConfig, make_toy_world
from butd.datasets.toy_features import write_oracle_store
from butd.datasets.vqa import (
    MissingImagesError,
    Vocab,
    VQADataConfig,
    VQADataset,
    VQAExample,
    build_answer_set,
    build_question_vocab,
    compared_forms,
    encode_question,
    join_store,
    load_vqa,
    soft_target,
    synthetic_record,
    tokenize_question,
)
from butd.shards import FeatureStore, ShardWriter


def _write(tmp: Path, anns: list[dict], questions: list[dict] | None = None) -> tuple[Path, Path]:
    questions = questions or [
        {
            "question_id": a["question_id"],
            "image_id": a["image_id"],
            "question": f"what is {a['question_id']}?",
        }
        for a in anns
    ]
    q, a = tmp / "q.json", tmp / "a.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": anns}))
    return q, a


def _ann(qid: int, answers: list[str], image_id: int = 1, answer_type: str = "other") -> dict:
    return {
        "question_id": qid,
        "image_id": image_id,
        "question_type": "what",
        "answer_type": answer_type,
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": x, "answer_id": i + 1} for i, x in enumerate(answers)],
    }


def test_load_and_tokenise(tmp_path: Path) -> None:
    q, a = _write(tmp_path, [_ann(5, ["red"] * 10, image_id=3)])
    (ex,) = load_vqa(q, a)
    assert (ex.question_id, ex.image_id, ex.answers[0], ex.answer_type) == (5, 3, "red", "other")
    assert tokenize_question("What's the man's shirt color, today?") == [
        "what",
        "'s",
        "the",
        "man",
        "'s",
        "shirt",
        "color",
        "today",
    ]
    vocab = Vocab(["<pad>", "<unk>", "what", "is"], "question")
    ids = encode_question(vocab, "what is " + "x " * 20, 14)
    assert ids.shape == (14,) and ids[:3].tolist() == [2, 3, 1] and ids.dtype == np.int64
    assert encode_question(vocab, "what", 14).tolist() == [2] + [0] * 13
    with pytest.raises(ValueError, match="question vocabulary must start"):
        Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "what"], "question")


def test_bad_annotations_name_the_question(tmp_path: Path) -> None:
    q, a = _write(tmp_path, [_ann(42, ["red"] * 9)])
    with pytest.raises(ValueError, match="question_id 42 has 9 answers"):
        load_vqa(q, a)
    q, a = _write(tmp_path, [_ann(43, ["red"] * 10, answer_type="colour")])
    with pytest.raises(ValueError, match="question_id 43 has unknown answer_type 'colour'"):
        load_vqa(q, a)


def test_files_that_are_not_vqa_files(tmp_path: Path) -> None:
    q, a = _write(tmp_path, [_ann(5, ["red"] * 10), _ann(6, ["blue"] * 10)])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: not a VQA annotations file"):
        load_vqa(q, tmp_path / "list.json")
    text = a.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) * 2 // 3])  # a truncated download
    with pytest.raises(json.JSONDecodeError):
        load_vqa(q, tmp_path / "cut.json")
    exs = load_vqa(q, a)  # read one entry at a time, yet equal to what the whole file says
    whole = json.loads(text)["annotations"]
    assert [(e.question_id, e.answers, e.mc_answer) for e in exs] == [
        (w["question_id"], tuple(x["answer"] for x in w["answers"]), w["multiple_choice_answer"]) for w in whole]


def test_answer_set_threshold_and_error() -> None:
    exs = [
        VQAExample(i, 1, "q", answer_type="other", answers=("x",) * 10, mc_answer=mc)
        for i, mc in enumerate(["Two"] * 3 + ["red."] * 2 + ["blue"])
    ]
    assert build_answer_set(exs, 2) == ["2", "red"]
    assert build_answer_set(exs, 1) == ["2", "red", "blue"]
    with pytest.raises(ValueError, match="too high"):
        build_answer_set(exs, 4)


def test_soft_targets_are_the_official_accuracy() -> None:
    answers = ["red", "blue", "green", "2", "white"]
    human = ("red",) * 4 + ("blue",) * 3 + ("green",) * 2 + ("yellow",)
    idx, val = soft_target(VQAExample(1, 1, "q", answers=human), compared_forms(answers))
    got = dict(zip(idx.tolist(), val.tolist(), strict=True))
    assert got == pytest.approx({0: 1.0, 1: 0.9, 2: 0.6})
    idx, val = soft_target(VQAExample(2, 1, "q", answers=("2",) + ("3",) * 9), compared_forms(answers))
    assert dict(zip(idx.tolist(), val.tolist(), strict=True)) == pytest.approx({3: 0.3})


def _store(path: Path, ids: list[int], k: int = 3, dim: int = 8) -> FeatureStore:
    rng = np.random.default_rng(0)
    with ShardWriter(path, "region") as w:
        for i in ids:
            w.add(str(i), synthetic_record(k + i % 2, dim, rng))
    return FeatureStore(path)


def test_missing_images(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", [1, 2])
    exs = [VQAExample(i, img, "q") for i, img in enumerate([4, 1, 2, 3, 3])]
    with pytest.raises(MissingImagesError, match="3 question.*2 image"):
        join_store(exs, store)
    kept, report = join_store(exs, store, skip_missing=True)
    assert [e.image_id for e in kept] == [1, 2]
    assert report["missing_questions"] == 3 and report["missing_images"] == 2
    assert report["missing_image_examples"] == [3, 4]  # sorted, whatever the questions' order


def test_dataset_items_are_padded_with_a_mask(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", [1, 2])
    exs = [
        VQAExample(7, 2, "what colour is it", answer_type="other", answers=("red",) * 10),
        VQAExample(8, 1, "is it", answer_type="yes/no", answers=("yes",) * 10),
    ]
    ds = VQADataset(exs, store, build_question_vocab(exs), ["red", "yes"], VQADataConfig(max_question_len=5))
    a, b = ds[0], ds[1]
    assert ds.max_boxes == 4 and a["features"].shape == (4, 8) and a["tokens"].shape == (5,)
    assert a["mask"].tolist() == [True] * 3 + [False] and b["mask"].tolist() == [True] * 4
    assert float(a["features"][3].abs().sum()) == 0.0 and float(a["boxes"][3].abs().sum()) == 0.0
    assert a["target"].tolist() == [1.0, 0.0] and b["target"].tolist() == [0.0, 1.0]
    assert int(a["question_id"]) == 7
    assert ds.answer_prior().tolist() == [0.5, 0.5]


def test_toy_oracle_store(tmp_path: Path) -> None:
    make_toy_world(tmp_path / "toy", ToyConfig(n_images=12, seed=3))
    path = write_oracle_store(tmp_path / "toy", tmp_path / "store", dim=40, seed=1, noise=0.0)
    store = FeatureStore(path)
    world = json.loads((tmp_path / "toy" / "toy_world.json").read_text())
    assert store.kind == "region" and len(store) == 12 and store.feature_dim == 40
    colours, shapes = world["colours"], world["shapes"]
    for image in world["images"]:
        rec = store[str(image["image_id"])]
        n_obj, k = len(image["objects"]), int(rec["num_boxes"])
        assert rec["features"].dtype == np.float32 and n_obj + 1 <= k <= n_obj + 2
        feats = rec["features"]
        found = sorted(
            (colours[int(np.argmax(f[: len(colours)]))], shapes[int(np.argmax(f[len(colours) :][:4]))])
            for f in feats
            if f[: len(colours)].max() > 0.5
        )
        assert found == sorted((o["colour"], o["shape"]) for o in image["objects"])
    with pytest.raises(ValueError, match="too small"):
        write_oracle_store(tmp_path / "toy", tmp_path / "store2", dim=8)


def test_candidates_come_from_the_training_files_only(tmp_path: Path) -> None:
    from butd.train.vqa import VQAPaths, load_config, prepare_data

    store = _store(tmp_path / "s", [1, 2])
    (tmp_path / "tr").mkdir()
    (tmp_path / "va").mkdir()
    train_q, train_a = _write(tmp_path / "tr", [_ann(i, ["red"] * 10) for i in range(3)])
    # "blue" is frequent in val only: counting it would leak val answers into the model
    val_q, val_a = _write(tmp_path / "va", [_ann(10 + i, ["blue"] * 10, image_id=2) for i in range(3)])
    paths = VQAPaths(str(tmp_path / "s"), (str(train_q),), (str(train_a),), (str(val_q),), (str(val_a),))
    cfg = load_config(None, {"data": {"min_answer_count": 2}})
    assert cfg.data.answers_from == "train"
    assert prepare_data(cfg, paths)[3] == ["red"]
    both = load_config(None, {"data": {"min_answer_count": 2, "answers_from": "train+val"}})
    assert prepare_data(both, paths)[3] == ["blue", "red"]  # bottom-up-attention-vqa's choice, on request
    with pytest.raises(ValueError, match="unknown answers_from"):
        prepare_data(load_config(None, {"data": {"answers_from": "val"}}), paths)
    assert store.feature_dim == 8
