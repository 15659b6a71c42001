"""bench/scale.py runs every step end to end at a tiny fraction (so it cannot rot), and its goal checks bite."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "scale.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_step_runs_at_a_tiny_fraction(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    scratch = tmp_path / "scratch"
    run = subprocess.run([sys.executable, str(BENCH), "--fraction", "0.0003", "--rounds", "1",
                          "--scratch", str(scratch), "--json", str(tmp_path / "r.json"),
                          "--markdown", str(tmp_path / "t.md")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    bench = _bench_module()
    steps, data = bench.steps, bench.data
    res = json.loads((tmp_path / "r.json").read_text())["0.0003"]
    assert set(res) == {"gen", *steps.STEPS}
    sizes = data.Sizes.at(0.0003)
    info = {k: v.get("info", {}) for k, v in res.items()}
    assert info["store-write"]["records"] == info["verify"]["records"] == sizes.images
    assert info["store-reads"]["reads"] == 10_000
    assert info["karpathy-load"]["images"] == sizes.images
    assert info["caption-epoch"]["items"] == info["caption-dataset"]["train_items"] \
        == info["karpathy-load"]["train_captions"]
    assert (info["vqa-load"]["train"], info["vqa-load"]["val"]) == (sizes.vqa_train, sizes.vqa_val)
    assert info["vqa-epoch"]["items"] == sizes.vqa_train and info["vqa-answers"]["candidates"] >= 1
    assert info["ray-extract"]["images"] == sizes.ray_images and info["ray-extract"]["failed"] == 1
    assert info["resume-scan"]["done"] == sizes.images  # one shard of 1000 > all: the whole store is adopted
    assert all(r["seconds"] > 0 and r["peak_anon_mb"] > 0 for k, r in res.items() if k != "gen")
    table = (tmp_path / "t.md").read_text()
    assert all(f"| `{s}` |" in table for s in steps.STEPS)
    assert "goals: all met" in run.stdout
    assert list(scratch.iterdir()) == []  # the generated data is removed


def _result(cpu: float, anon: float = 100.0) -> dict:
    return {"seconds": cpu, "cpu_seconds": cpu, "peak_rss_mb": anon + 50, "peak_anon_mb": anon, "info": {}}


def test_goals_flag_superlinear_steps_and_memory() -> None:
    bench = _bench_module()
    results = {0.01: {"linear": _result(1.0), "quadratic": _result(1.0), "fast": _result(0.001),
                      "fat": _result(1.0)},
               0.1: {"linear": _result(11.0), "quadratic": _result(100.0), "fast": _result(0.05),
                     "fat": _result(10.0)},
               1.0: {"linear": _result(115.0), "quadratic": _result(10_000.0), "fast": _result(0.09),
                     "fat": _result(100.0, anon=5000.0)}}
    table, misses = bench.markdown(results, ["linear", "quadratic", "fast", "fat"])
    assert sorted(m.split(":")[0] for m in misses) == ["fat", "quadratic", "quadratic"]
    row = next(line for line in table.splitlines() if line.startswith("| `quadratic`"))
    assert "100.0× ✘" in row
    assert "✘" not in next(line for line in table.splitlines() if line.startswith("| `linear`"))


def test_rounds_give_median_times_and_the_largest_peaks() -> None:
    bench = _bench_module()
    runs = [{"s": _result(t, anon=a)} for t, a in ((3.0, 10.0), (1.0, 30.0), (2.0, 20.0))]
    got = bench._combine(runs)["s"]
    assert (got["seconds"], got["cpu_seconds"], got["peak_anon_mb"], got["peak_rss_mb"]) == (2.0, 2.0, 30.0, 80.0)
    assert [r["seconds"] for r in got["rounds"]] == [3.0, 1.0, 2.0]
