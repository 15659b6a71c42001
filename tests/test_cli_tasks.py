"""`butd train / eval / caption / answer`: the task comes from the model registry; mistakes are one line."""

import json

import pytest
from click.testing import CliRunner

from butd.cli import main
from butd.models.registry import MODELS, task_of


def _lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("device:")]


def test_train_lists_every_registered_model_and_checks_task_options(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["train", "--help"])
    assert r.exit_code == 0 and "--captions" in r.output and "--questions" in r.output
    for name in MODELS.names():
        assert name in r.output
    r = run(main, ["train", "--model", "nope", "--features", str(tmp_path), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "'nope' is not one of" in r.output
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "c.json").write_text("{}")
    r = run(main, ["train", "--model", "vqa", "--features", str(store), "--out", str(tmp_path / "r"),
                   "--captions", str(tmp_path / "c.json")])
    assert r.exit_code == 2
    assert _lines(r.output) == ["Error: --captions is a caption option (--model vqa is a vqa model): "
                                "drop it, or choose a caption model"]
    r = run(main, ["train", "--model=sat-hard", "--features", str(store), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and _lines(r.output) == [
        "Error: --captions is required to train a caption model (--model sat-hard): pass --captions FILE"]
    assert {task_of(n) for n in MODELS.names()} == {"caption", "vqa"}


def test_eval_and_caption_refuse_what_is_not_a_suitable_run(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["eval", str(tmp_path)])
    assert r.exit_code == 2
    assert _lines(r.output) == [f"Error: no run.json, so this is not a finished butd run ({tmp_path}): "
                                "pass the --out directory of `butd train`"]
    (tmp_path / "run.json").write_text(json.dumps({"format": "butd-run", "version": 1, "task": "vqa"}))
    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    r = run(main, ["caption", str(tmp_path), str(img)])
    assert r.exit_code == 2 and "this is a vqa run, not a caption run" in r.output
    (tmp_path / "run.json").write_text("{not json")
    r = run(main, ["eval", str(tmp_path)])
    assert r.exit_code == 1 and "run.json is unreadable" in r.output and len(_lines(r.output)) == 1


@pytest.mark.parametrize("command", ["train", "eval", "caption", "answer", "extract"])
def test_every_command_defaults_to_device_auto(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0 and "--device" in r.output and "[default: auto]" in r.output


def test_python_dash_m_butd_is_the_cli():
    import runpy

    with pytest.raises(SystemExit) as exc:
        import sys

        argv, sys.argv = sys.argv, ["butd", "--version"]
        try:
            runpy.run_module("butd", run_name="__main__")
        finally:
            sys.argv = argv
    assert exc.value.code == 0
