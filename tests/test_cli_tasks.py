"""`butd train` / `butd eval` dispatch and their one-line errors."""

import json

from click.testing import CliRunner

from butd.cli import main


def test_train_dispatches_on_model_and_explains_itself():
    run = CliRunner().invoke
    r = run(main, ["train"])
    assert r.exit_code == 2 and "--model updown|sat-soft|sat-hard|vqa" in r.output
    r = run(main, ["train", "--model", "nope"])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output
    r = run(main, ["train", "--model", "vqa", "--help"])
    assert r.exit_code == 0 and "--questions" in r.output and "--captions" not in r.output
    r = run(main, ["train", "--model=sat-hard", "--help"])
    assert r.exit_code == 0 and "--captions" in r.output and "--scst-epochs" in r.output


def test_eval_and_caption_refuse_what_is_not_a_suitable_run(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["eval", str(tmp_path)])
    assert r.exit_code == 1
    assert r.output.strip() == f"Error: {tmp_path}: no run.json, so this is not a finished butd run"
    (tmp_path / "run.json").write_text(json.dumps({"task": "vqa"}))
    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    r = run(main, ["caption", str(tmp_path), str(img)])
    assert r.exit_code == 1 and "is a vqa run; `butd caption` needs a captioning run" in r.output
    (tmp_path / "run.json").write_text("{not json")
    r = run(main, ["eval", str(tmp_path)])
    assert r.exit_code == 1 and "unreadable" in r.output
