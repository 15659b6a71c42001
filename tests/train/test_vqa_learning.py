"""The VQA trainer learns the toy world (oracle region features) and the CLI writes a complete run."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from butd.cli import main
from butd.datasets.toy_features import oracle_vqa_world
from butd.evaluate.vqa_accuracy import normalize_answer, vqa_accuracy
from butd.tasks.vqa import evaluate
from butd.train.vqa import VQAPaths, load_config, train_vqa

SMALL_MODEL = {
    "word_dim": 64,
    "hidden_dim": 128,
    "attention_dim": 128,
    "joint_dim": 128,
    "classifier_dim": 128,
}


def _world(root: Path, n_images: int) -> VQAPaths:
    return VQAPaths(**oracle_vqa_world(root, n_images))  # type: ignore[arg-type]


def _by_category(paths: VQAPaths, preds: dict[int, str]) -> dict[str, tuple[float, float]]:
    """(model accuracy, majority-answer baseline) for counting and colour questions, separately."""
    train = json.loads(Path(paths.annotations[0]).read_text())["annotations"]
    val = json.loads(Path(paths.val_annotations[0]).read_text())["annotations"]
    out = {}
    for name, qtype in (("counting", "how many"), ("colour", "what color is the")):
        majority = Counter(
            normalize_answer(a["multiple_choice_answer"]) for a in train if a["question_type"] == qtype
        ).most_common(1)[0][0]
        subset = [a for a in val if a["question_type"] == qtype]
        assert len(subset) >= 20, f"too few {name} questions in val"
        model = vqa_accuracy(preds, subset)["overall"]
        baseline = vqa_accuracy({a["question_id"]: majority for a in subset}, subset)["overall"]
        out[name] = (model, baseline)
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learn(tmp_path: Path, n_images: int, epochs: int) -> dict[str, tuple[float, float]]:
    paths = _world(tmp_path, n_images)
    cfg = load_config(
        None,
        {
            "model": SMALL_MODEL,
            "data": {"min_answer_count": 1},
            "eval_batch_size": 256,
            "loop": {"epochs": epochs, "batch_size": 32, "lr": 1e-2, "log_every": 0},
        },
    )
    train_vqa(cfg, paths, tmp_path / "run", echo=None)
    evaluate(tmp_path / "run", "val")
    results = json.loads((tmp_path / "run" / "results_val.json").read_text())
    return _by_category(paths, {r["question_id"]: r["answer"] for r in results})


def _check(scores: dict[str, tuple[float, float]]) -> None:
    for name, (model, baseline) in scores.items():
        assert model >= baseline + 30.0, f"{name}: model {model:.1f} vs majority baseline {baseline:.1f}"


def test_learns_counting_and_colour_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    _check(_learn(tmp_path, n_images=300, epochs=25))
    assert time.perf_counter() - t0 < 120  # ~35 s on one free core; generous for a busy CI box


@pytest.mark.slow
def test_learns_counting_and_colour_bigger(tmp_path: Path) -> None:
    _check(_learn(tmp_path, n_images=800, epochs=30))


def test_cli_train_and_eval_write_a_complete_run(tmp_path: Path) -> None:
    paths = _world(tmp_path, 24)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        yaml.safe_dump({"model": {k: 16 for k in SMALL_MODEL}, "loop": {"batch_size": 16, "log_every": 1}})
    )
    run = tmp_path / "run"
    args = [
        "--model",
        "vqa",
        "--features",
        paths.features,
        "--questions",
        paths.questions[0],
        "--annotations",
        paths.annotations[0],
        "--val-questions",
        paths.val_questions[0],
        "--val-annotations",
        paths.val_annotations[0],
        "--out",
        str(run),
        "--config",
        str(cfg_file),
        "--epochs",
        "2",
        "--min-answer-count",
        "1",
    ]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output
    for name in (
        "config.yaml",
        "run.json",
        "answers.json",
        "vocab.json",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).exists(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["loop"]["epochs"] == 2 and saved["model"]["hidden_dim"] == 16
    res = evaluate(run, "val")
    assert set(res["per_answer_type"]) <= {"yes/no", "number", "other"} and 0 <= res["overall"] <= 100
    assert json.loads((run / "eval_val.json").read_text())["overall"] == res["overall"]
    preds = json.loads((run / "results_val.json").read_text())
    assert preds and set(preds[0]) == {"question_id", "answer"}
    resume_args = [*args[:-4], "--epochs", "3", "--min-answer-count", "1", "--resume"]
    more = CliRunner().invoke(main, ["train", *resume_args])
    assert more.exit_code == 0, more.output
    assert "3 epochs" in more.output and len(json.loads((run / "answers.json").read_text())) > 0
    bad_args = [str(tmp_path / "bad") if a == str(run) else a for a in args[:-2]]
    bad = CliRunner().invoke(main, ["train", *bad_args, "--min-answer-count", "100000"])
    assert bad.exit_code == 1 and "too high" in bad.output and not (tmp_path / "bad").exists()
    taken = CliRunner().invoke(main, ["train", *args])  # a finished run is not overwritten silently
    assert taken.exit_code == 2 and "--resume" in taken.output
