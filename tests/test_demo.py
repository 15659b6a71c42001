import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from line_shapes import classify

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.slow
def test_demo_runs_every_stage_end_to_end(tmp_path):
    """`make demo` in small: toy world -> Ray extraction -> captioning + VQA -> metrics -> captions -> reports,
    run as the real command (so Ray's and the Java tools' output would show), printing only butd's own lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "butd", "demo", "--out", str(tmp_path / "demo"), "--images", "60"],
                          capture_output=True, text=True, env=env, timeout=580)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    out = tmp_path / "demo"
    for store in ("toy-boxes", "toy-grid"):
        assert (out / "features" / store / "manifest.json").exists()
    for run in ("updown", "sat-soft"):
        report = json.loads((out / "runs" / run / "eval_test.json").read_text())
        assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(report["metrics"])
        assert (out / "reports" / f"{run}.html").exists()
        assert {"repeat", "bad_ending", "mean_length", "vocabulary"} <= set(report["diagnostics"])
        assert {"CHAIR_s", "CHAIR_i"} <= set(report["chair"]) and (out / "runs" / run / "attention_test.json").exists()
    grounding = json.loads((out / "runs" / "updown" / "eval_test.json").read_text())["grounding"]
    assert grounding["grounded_mentions"] > 0 and grounding["grounding_accuracy"] is not None
    for printed in ("CHAIR-s", "CHAIR-i", "grounding accuracy", "repeats"):  # the summary of the toy Up-Down run
        assert printed in output, printed
    assert json.loads((out / "runs" / "vqa" / "eval_val.json").read_text())["overall"] > 0
    assert (out / "answer_attention.png").exists()
    assert "grace_hopper.jpg\t" in output  # a real photo got a caption
    assert "demo finished" in output
    assert output.count("SPICE skipped") <= 1  # two evaluations, one notice
    foreign, unknown = classify(output)
    assert not foreign, f"foreign lines: {foreign}"
    assert not unknown, f"lines of no known butd shape: {unknown}"
