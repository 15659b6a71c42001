"""A quiet terminal: `butd eval` and `butd train --nproc 2`, run as a user runs them, print only butd's own lines
(tests/line_shapes.py says what that means); what the libraries print is captured and shown with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from butd.evaluate.quiet import library_output
from line_shapes import classify

SRC = str(Path(__file__).resolve().parents[1] / "src")
CFG = {"model_name": "updown", "model": {"embed_dim": 16, "hidden_dim": 24, "att_dim": 8, "dropout": 0.0},
       "data": {"min_count": 2}, "device": "cpu",
       "xe": {"batch_size": 16, "log_every": 1, "epochs": 2, "lr": 5e-3, "monitor": "CIDEr-D"}}


def butd(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("OMP_NUM_THREADS")  # unset, as on a fresh shell: torchrun then prints its banner
    return subprocess.run([sys.executable, "-m", "butd", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def only_butd(proc: subprocess.CompletedProcess) -> None:
    """Every line of stdout and stderr is butd's own."""
    foreign, unknown = classify(proc.stdout + "\n" + proc.stderr)
    assert not foreign, f"foreign lines: {foreign}"
    assert not unknown, f"lines of no known butd shape: {unknown}"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store

    root = tmp_path_factory.mktemp("quiet")
    make_toy_world(root, ToyConfig(n_images=24, seed=1))
    write_oracle_store(root, root / "store", dim=32)
    (root / "cfg.yaml").write_text(yaml.safe_dump(CFG), encoding="utf-8")
    return root


def _train(toy: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return butd("train", "--model", "updown", "--features", toy / "store", "--captions", toy / "dataset_coco.json",
                "--out", out, "--config", toy / "cfg.yaml", *extra)


def test_library_output_is_captured_at_both_levels_and_replayed_only_when_asked(capfd):
    def noisy():
        print("{'testlen': 3}")  # pycocoevalcap's Bleu prints
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('PTBTokenizer tokenized 9 tokens\\n')"])

    with library_output(verbose=False):
        noisy()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    with library_output(verbose=True):
        noisy()
    out, err = capfd.readouterr()
    assert out == "" and "{'testlen': 3}" in err and "PTBTokenizer tokenized 9 tokens" in err
    with pytest.raises(RuntimeError), library_output(verbose=False):  # a failure explains itself
        noisy()
        raise RuntimeError("java broke")
    assert "PTBTokenizer tokenized" in capfd.readouterr().err


@pytest.mark.slow
def test_butd_eval_prints_only_its_own_lines(toy, tmp_path):
    run = tmp_path / "run"
    assert _train(toy, run).returncode == 0
    proc = butd("eval", run, "--beam", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "wrote " in text and ("BLEU-4" in text)
    assert text.count("SPICE skipped") <= 1  # the notice once (when the jars are missing), not twice
    foreign, unknown = classify(text)
    assert not foreign and not unknown, (foreign, unknown)


@pytest.mark.slow
def test_butd_train_nproc_2_hides_torchrun_banners_unless_verbose(toy, tmp_path):
    proc = _train(toy, tmp_path / "r2", "--nproc", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OMP_NUM_THREADS" not in proc.stderr and proc.stdout.count("wrote ") == 1
    verbose = _train(toy, tmp_path / "r3", "--nproc", "2", "--verbose")
    assert verbose.returncode == 0 and "OMP_NUM_THREADS" in verbose.stderr  # shown when asked for
    only_butd(proc)
