"""`butd train --model <caption model>` and `butd eval` on a tiny toy run."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from butd.cli import main
from butd.evaluate.caption_metrics import CocoScorers
from butd.tasks.caption import evaluate as eval_caption


def train_caption_cmd_args(args: list[str]) -> list[str]:
    return ["train", *(args if "--model" in args else ["--model", "updown", *args])]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    root = tmp_path_factory.mktemp("toycli")
    make_toy_world(root, ToyConfig(n_images=40, seed=2))
    return root / "dataset_coco.json", write_oracle_store(root, root / "store", dim=32)


def test_train_and_eval(toy, tmp_path) -> None:
    captions, store = toy
    (tmp_path / "c.yaml").write_text(
        "model: {embed_dim: 16, hidden_dim: 32, att_dim: 16}\ndata: {min_count: 1}\n"
        "xe: {batch_size: 16, log_every: 0}\nscst: {batch_size: 8, log_every: 0}\n"
        "scst_objective: {samples: 2}\ndevice: cpu\n")
    run = tmp_path / "run"
    args = ["--model", "sat-soft", "--features", str(store), "--captions", str(captions), "--out", str(run),
            "--config", str(tmp_path / "c.yaml"), "--epochs", "1", "--scst-epochs", "1"]
    res = CliRunner().invoke(main, train_caption_cmd_args(args))
    assert res.exit_code == 0, res.output
    assert "best validation score" in res.output
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == "sat-soft" and set(info["summary"]["phases"]) == {"xe", "scst"}

    report = eval_caption(run, "test", beam=2, scorers=CocoScorers.build(meteor=False, spice=False))
    assert report["n_images"] > 0 and 0.0 <= report["metrics"]["CIDEr"]
    results = json.loads((run / "captions_test.json").read_text())
    assert len(results) == report["n_images"]
    assert all(isinstance(r["image_id"], int) and isinstance(r["caption"], str) for r in results)
    written = json.loads((run / "eval_test.json").read_text())
    assert written["metrics"]["BLEU-4"] == report["metrics"]["BLEU-4"]


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR / PTB tokenizer need java")
def test_eval_cmd_full_metrics(toy, tmp_path) -> None:
    captions, store = toy
    run = tmp_path / "run"
    (tmp_path / "c.yaml").write_text("model: {embed_dim: 16, hidden_dim: 32, att_dim: 16}\n"
                                     "xe: {log_every: 0}\n")
    args = ["--features", str(store), "--captions", str(captions), "--out", str(run), "--epochs", "1",
            "--device", "cpu", "--config", str(tmp_path / "c.yaml")]
    res = CliRunner().invoke(main, train_caption_cmd_args(args))
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["eval", str(run), "--split", "val", "--beam", "1"])
    assert res.exit_code == 0, res.output
    assert "METEOR" in res.output and "CIDEr" in res.output
    report = json.loads((run / "eval_val.json").read_text())
    assert {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(report["metrics"])


def test_bad_inputs_one_line(toy, tmp_path) -> None:
    captions, store = toy
    (tmp_path / "bad.json").write_text("{oops")
    bad = ["--features", str(store), "--captions", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(main, train_caption_cmd_args(bad))
    assert res.exit_code == 1 and "malformed JSON" in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.startswith("device:")]
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    doc = json.loads(captions.read_text())
    doc["images"][0]["cocoid"] = 999999
    if doc["images"][0]["split"] not in ("train", "restval"):
        doc["images"][0]["split"] = "train"
    (tmp_path / "ghost.json").write_text(json.dumps(doc))
    args = ["--features", str(store), "--captions", str(tmp_path / "ghost.json"),
            "--out", str(tmp_path / "g"), "--epochs", "0"]
    res = CliRunner().invoke(main, train_caption_cmd_args(args))
    assert res.exit_code != 0 and "1 of" in res.output and "missing" in res.output
    res = CliRunner().invoke(main, train_caption_cmd_args([*args, "--skip-missing"]))
    assert res.exit_code == 0, res.output


def test_eval_uses_the_runs_decode_config(toy, tmp_path) -> None:
    captions, store = toy
    (tmp_path / "c.yaml").write_text(
        "model: {embed_dim: 16, hidden_dim: 32, att_dim: 16}\ndata: {min_count: 1}\nxe: {log_every: 0}\n"
        "decode: {method: beam, beam: 2, max_len: 4, block_repeats: true}\ndevice: cpu\n")
    run = tmp_path / "run"
    args = ["--features", str(store), "--captions", str(captions), "--out", str(run), "--epochs", "1",
            "--config", str(tmp_path / "c.yaml")]
    res = CliRunner().invoke(main, train_caption_cmd_args(args))
    assert res.exit_code == 0, res.output
    scorers = CocoScorers.build(meteor=False, spice=False)
    report = eval_caption(run, "test", scorers=scorers)
    assert (report["beam"], report["decode"]["max_len"], report["decode"]["block_repeats"]) == (2, 4, True)
    for r in json.loads((run / "captions_test.json").read_text()):
        words = r["caption"].split()
        assert len(words) <= 4
        assert all(words.count(w) == 1 for w in words if w not in report["decode"]["allowed_repeats"])
    greedy = eval_caption(run, "test", beam=1, scorers=scorers)  # an explicit --beam still overrides
    assert greedy["beam"] == 1 and greedy["decode"]["method"] == "greedy" and greedy["decode"]["max_len"] == 4
