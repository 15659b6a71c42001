"""`make demo`: the main job end to end on the embedded toy world (each step prints what it did)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console


def _step(console: Console, title: str, fn: Callable[[], str]) -> None:
    t0 = time.perf_counter()
    console.rule(f"[bold]{title}")
    detail = fn()
    console.print(f"{detail}  [dim]({time.perf_counter() - t0:.1f} s)[/dim]")


def run_demo(out: str | Path, *, n_images: int = 120, console: Console | None = None) -> dict:
    """Toy world -> feature store -> verify -> read back against ground truth. Returns a summary."""
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.datasets.toy_features import write_oracle_store
    from butd.shards import FeatureStore, verify_store

    console = console or Console()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        import shutil

        shutil.rmtree(out)
    toy, store_path = out / "toy", out / "features" / "toy-oracle"
    summary: dict = {}

    def world() -> str:
        s = make_toy_world(toy, ToyConfig(n_images=n_images, seed=0))
        summary["toy"] = s
        return f"{n_images} images with captions, VQA questions and VG boxes in {toy}"

    def features() -> str:
        write_oracle_store(toy, store_path)
        return f"region store written to {store_path}"

    def verify() -> str:
        report = verify_store(store_path)
        if not report.ok:
            raise SystemExit("verification failed: " + report.problems[0])
        summary["records"] = report.records
        return f"verified: {report.records} records, every shard hash and record checked"

    def read_back() -> str:
        store = FeatureStore(store_path)
        gt = json.loads((toy / "toy_world.json").read_text())
        matched = 0
        for image in gt["images"]:
            rec = store[str(image["image_id"])]
            boxes = {tuple(np.round(b, 3)) for b in rec["boxes"].tolist()}
            if all(tuple(np.round(np.float32(o["box"]).tolist(), 3)) in boxes for o in image["objects"]):
                matched += 1
        summary["matched"] = matched
        if matched != len(gt["images"]):
            raise SystemExit(f"only {matched}/{len(gt['images'])} images read back their ground-truth boxes")
        return f"{matched}/{len(gt['images'])} images read back with all ground-truth boxes ({store})"

    _step(console, "1. toy world", world)
    _step(console, "2. features -> store", features)
    _step(console, "3. verify", verify)
    _step(console, "4. read back", read_back)
    console.rule("[bold green]demo finished")
    return summary
