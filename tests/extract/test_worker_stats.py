"""Peak memory per model worker (RSS; CUDA max allocated on GPUs) reaches the summary (`butd extract --json`
carries it too: tests/extract/test_runner.py::test_cli_real_photos_with_broken_files)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from butd.extract.registry import extractor_config
from butd.extract.runner import ModelWorker, decode_batch
from butd.extract.summary import Summary
from butd.extract.worker_stats import peak_memory, worker_memory

MIB = 2**20


def _current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _photos(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(root / f"im{i}.png")


def test_peak_memory_is_at_least_what_this_process_holds_now():
    before = peak_memory("cpu")
    block = np.ones(64 * MIB, np.uint8)  # touch 64 MiB more than before
    after = peak_memory("cpu")
    assert after["cuda_max_allocated_bytes"] is None
    assert after["peak_rss_bytes"] >= _current_rss() - 4 * MIB  # the peak bounds what is resident now
    assert after["peak_rss_bytes"] >= before["peak_rss_bytes"] and int(block[-1]) == 1


def test_model_worker_reports_its_peak_and_time_in_the_model(tmp_path):
    _photos(tmp_path, 2)
    threads = torch.get_num_threads()
    try:
        cfg = extractor_config("effnetlite0", image_size=64)
        worker = ModelWorker(cfg.name, asdict(cfg), "cpu", 1)
        prep = worker.info()["preprocessor"]
        out = worker.run(decode_batch([(p.stem, str(p), None) for p in sorted(tmp_path.glob("*.png"))], prep))
    finally:
        torch.set_num_threads(threads)
    assert [rec is not None for _, rec, _ in out] == [True, True]
    stats = worker.stats()
    assert stats["busy_s"] > 0 and stats["cuda_max_allocated_bytes"] is None
    assert stats["peak_rss_bytes"] >= _current_rss() - 4 * MIB
    fields = worker_memory([stats, {**stats, "busy_s": 99.0}], window_s=2 * stats["busy_s"])
    assert fields == {"peak_rss_bytes": [stats["peak_rss_bytes"]] * 2, "cuda_max_allocated_bytes": [],
                      "busy_fraction": [0.5, 1.0]}  # a share of the window, capped at 1


def test_summary_prints_and_serialises_peak_memory():
    s = Summary("out", 10, 10, 0, 0, 5.0, 2.0, 2, True, peak_rss_bytes=[512 * MIB, 1536 * MIB],
                cuda_max_allocated_bytes=[3 * 1024 * MIB, 2 * 1024 * MIB], busy_fraction=[0.95, 0.9])
    assert "peak memory per worker: RSS 512 MiB, 1.50 GiB; CUDA max allocated 3.00 GiB, 2.00 GiB; " \
           "in the model 95%, 90% of the time" in s.lines()
    d = s.to_dict()
    assert d["peak_rss_bytes"] == [512 * MIB, 1536 * MIB] and d["cuda_max_allocated_bytes"] == [3 * 2**30, 2 * 2**30]
    json.dumps(d)
    cpu = Summary("out", 1, 1, 0, 0, 1.0, 1.0, 1, True, peak_rss_bytes=[300 * MIB], busy_fraction=[0.5])
    assert "peak memory per worker: RSS 300 MiB; in the model 50% of the time" in cpu.lines()
    done = Summary("out", 3, 0, 3, 0, 0.0, 0.0, 0, True)  # a finished store: no worker ran
    assert not any("peak memory" in line for line in done.lines()) and done.to_dict()["peak_rss_bytes"] == []
