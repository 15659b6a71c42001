"""bench/gpu.py, the one-shot GPU measurement: its dry run (every stage, one step, CPU) and its guards."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"


def _env() -> dict[str, str]:
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=_env(),
                          timeout=900)


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_dry_run_measures_every_stage(tmp_path):
    res = _bench("--dry-run", "--out", str(tmp_path / "gpu.json"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    stages = data["stages"]
    assert list(stages) == ["detector", "caption", "vqa", "pipeline"]
    assert all(s["status"] == "ok" and s["rows"] for s in stages.values()), stages
    det = stages["detector"]["rows"]
    assert {(r["precision"], r["layout"]) for r in det} == {("fp32", "channels_last"), ("fp16", "nchw")}
    assert all(r["images_per_s"] > 0 and r["steps"] == 1 and r["boxes_mean"] >= 1 for r in det)
    assert [r["measure"].split()[1] for r in stages["caption"]["rows"]] == ["XE", "SCST"]
    configs = sorted(p.name for p in (ROOT / "configs").glob("vqa*.yaml"))
    assert [r["measure"].split()[-1] for r in stages["vqa"]["rows"]] == configs
    [pipe] = stages["pipeline"]["rows"]
    assert pipe["written"] == pipe["images"] == 4 and len(pipe["worker_peak_rss_mib"]) == pipe["workers"] == 1
    assert data["meta"]["dry_run"] is True
    md = (tmp_path / "gpu.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert len(rows) == sum(len(s["rows"]) for s in stages.values())  # one table line per measurement
    assert "images/s" in md and "steps/s" in md and "questions/s" in md


def test_a_failing_stage_is_recorded_and_the_next_still_runs(gpu_bench, tmp_path):
    def boom(ctx, rec):
        rec.row("boom", {"images_per_s": 1.0, "partial": True})
        raise RuntimeError("CUDA error: out of memory")

    def after(ctx, rec):
        assert ctx.tmp == tmp_path / "work" / "after" and ctx.tmp.is_dir()  # each stage in its own folder
        rec.row("after", {"steps": 1})

    (tmp_path / "work").mkdir()
    rec = gpu_bench.Recorder(tmp_path / "r.json", gpu_bench.machine(torch.device("cpu"), 60, True))
    ctx = gpu_bench.Ctx(torch.device("cpu"), True, 60.0, tmp=tmp_path / "work")
    assert gpu_bench.run_stages(ctx, rec, {"boom": boom, "after": after}) == 1
    saved = json.loads((tmp_path / "r.json").read_text())["stages"]  # on disk, not only in memory
    assert saved["boom"]["status"] == "error" and "out of memory" in saved["boom"]["error"]
    assert saved["boom"]["rows"] == [{"images_per_s": 1.0, "partial": True}]  # what it measured is kept
    assert saved["after"] == {"rows": [{"steps": 1}], "status": "ok", "elapsed_s": saved["after"]["elapsed_s"]}
    assert "| boom | error: RuntimeError: CUDA error: out of memory |" in (tmp_path / "r.md").read_text()


def test_a_spent_budget_skips_stages_but_writes_the_file(gpu_bench, tmp_path):
    rec = gpu_bench.Recorder(tmp_path / "r.json", gpu_bench.machine(torch.device("cpu"), 0, True))
    ctx = gpu_bench.Ctx(torch.device("cpu"), True, 0.0, tmp=tmp_path)
    ran = []
    assert gpu_bench.run_stages(ctx, rec, {"vqa": lambda c, r: ran.append(1)}) == 0
    assert not ran and json.loads((tmp_path / "r.json").read_text())["stages"]["vqa"]["status"] == "skipped"


def test_usage_mistakes_are_one_line(gpu_bench, tmp_path, capsys):
    assert gpu_bench.main(["--dry-run", "--stages", "detector,nope", "--out", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "Error: unknown stage 'nope' (--stages): choose from detector, caption, vqa, pipeline"]
    if not torch.cuda.is_available():
        assert gpu_bench.main(["--out", str(tmp_path / "y.json")]) == 2
        assert capsys.readouterr().err.splitlines() == [
            "Error: no CUDA GPU is visible (--device cuda): run on a GPU machine, or --dry-run"]
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
