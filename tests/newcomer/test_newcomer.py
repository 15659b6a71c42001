"""A newcomer adds a caption model, an extractor and an import format: one file + one registry line each.

The CLI choices, the docs (`butd registries --markdown`) and the parametrised tests pick them up, and they
work end to end: import a file, extract a store, train on it, caption a new image with the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from registry_lines import LINES, register_all

from butd.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registered(monkeypatch):
    register_all(monkeypatch.setitem)


def _out(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_cli_choices_and_docs_list_them(registered):
    assert "gru-caption" in _out(["train", "--help"])
    assert "colour-grid" in _out(["extract", "--help"])
    assert "jsonl-demo" in _out(["shards", "import", "--help"]) and "jsonl-demo" in _out(["download", "--help"])
    docs = _out(["registries", "--markdown"])
    for _, (name, entry) in LINES.items():
        assert f"| `{name}` | {entry.doc} |" in docs


def test_without_the_line_they_are_unknown():
    r = CliRunner().invoke(main, ["train", "--model", "gru-caption", "--features", ".", "--out", "x"])
    assert r.exit_code == 2 and "'gru-caption' is not one of" in r.output


def test_they_work_end_to_end(registered, tmp_path, one_torch_thread):
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.extract.registry import build_extractor, config_from_manifest, extractor_config
    from butd.extract.runner import manifest_entry
    from butd.extract.single import extract_files
    from butd.extract.sources import iter_source
    from butd.shards import FeatureStore, ShardWriter, verify_store

    # import format: a store from a JSON-lines file
    lines = [{"image_id": i, "w": 10, "h": 10, "boxes": [[0, 0, 5, 5]], "features": [[float(i)] * 4]} for i in range(3)]
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    _out(["shards", "import", "--format", "jsonl-demo", str(tmp_path / "f.jsonl"), str(tmp_path / "imported")])
    assert verify_store(tmp_path / "imported").ok
    assert float(FeatureStore(tmp_path / "imported")["2"]["features"][0, 0]) == 2

    # extractor: a store of the toy world, whose manifest gives back the config
    make_toy_world(tmp_path / "toy", ToyConfig(n_images=30, seed=5))
    cfg = extractor_config("colour-grid", cells=3)
    entry = manifest_entry(dataclasses.asdict(cfg), {"name": "colour-grid", "weights_sha256": None,
                                                     "details": build_extractor("colour-grid", cfg).config_dict()})
    assert config_from_manifest(entry) == cfg
    items = list(iter_source("toy", tmp_path / "toy"))
    with ShardWriter(tmp_path / "store", "grid", extractor=entry) as writer:
        for item, (rec, _) in zip(items, extract_files(entry, [it.path for it in items])):
            writer.add(item.image_id, rec)
    assert FeatureStore(tmp_path / "store").feature_dim == 3

    # caption model: trained by `butd train`, then `butd caption` runs the extractor and the model on a new image
    (tmp_path / "c.yaml").write_text("model: {embed_dim: 8, hidden_dim: 16, att_dim: 8}\ndata: {min_count: 1}\n"
                                     "xe: {batch_size: 16, log_every: 0}\n")
    _out(["train", "--model", "gru-caption", "--features", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
          "--captions", str(tmp_path / "toy" / "dataset_coco.json"), "--epochs", "1", "--device", "cpu",
          "--config", str(tmp_path / "c.yaml")])
    photo = items[0].path
    out = _out(["caption", str(tmp_path / "run"), photo, "--beam", "2", "--device", "cpu"])
    assert any(line.startswith(f"{photo}\t") for line in out.splitlines())
    assert np.isfinite(json.loads((tmp_path / "run" / "run.json").read_text())["store"]["feature_dim"])


def test_the_parametrised_tests_pick_them_up():
    """The suite's registry-parametrised tests, collected with the three lines added, run the dummies too."""
    tests = ["tests/models/test_caption_models.py", "tests/extract/test_manifest_config.py", "tests/test_config.py",
             "tests/test_registries.py"]
    env = {**os.environ, "BUTD_TEST_DUMMIES": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                        "gru-caption or colour-grid or jsonl-demo", "-rA", *tests],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    passed = [ln for ln in r.stdout.splitlines() if ln.startswith("PASSED")]
    for name in ("gru-caption", "colour-grid", "jsonl-demo"):
        assert any(name in ln for ln in passed), (name, r.stdout[-2000:])
    assert len(passed) >= 9  # 3 caption-model contract tests, 3 config/manifest round trips, 3 registry entries
