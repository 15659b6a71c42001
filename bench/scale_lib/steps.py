"""The timed steps, in four groups; each group runs in a fresh process per data size (``bench/scale.py``).

Every step calls butd's own functions, as ``butd extract`` / ``butd train`` call them; nothing is
re-implemented here. A group runs the steps asked for plus the ones they need (``needed``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from scale_lib import data
from scale_lib.meter import Meter

GROUPS: dict[str, list[str]] = {
    "store": ["store-write", "store-open", "store-reads", "verify", "resume-scan"],
    "caption": ["karpathy-load", "caption-vocab", "cider-df", "caption-dataset", "caption-epoch"],
    "vqa": ["vqa-load", "vqa-join", "question-vocab", "vqa-answers", "vqa-soft-scores", "vqa-dataset", "vqa-epoch"],
    "ray": ["ray-extract"],
}
STEPS = [s for g in GROUPS.values() for s in g]
_NEEDS = {
    "store-open": ["store-write"], "store-reads": ["store-write"], "verify": ["store-write"],
    "resume-scan": ["store-write"],
    "caption-vocab": ["karpathy-load"], "cider-df": ["karpathy-load"],
    "caption-dataset": ["caption-vocab", "store-write"], "caption-epoch": ["caption-dataset"],
    "vqa-join": ["vqa-load", "store-write"], "question-vocab": ["vqa-join"], "vqa-answers": ["vqa-join"],
    "vqa-soft-scores": ["vqa-answers"], "vqa-dataset": ["question-vocab", "vqa-answers"],
    "vqa-epoch": ["vqa-dataset"],
}
READS = 10_000
CAPTION_BATCH, VQA_BATCH = 10, 512  # configs/updown.yaml xe.batch_size (images x 5 captions), configs/vqa.yaml


def needed(steps: list[str]) -> list[str]:
    """``steps`` and everything they depend on, in run order."""
    out, todo = set(), list(steps)
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(_NEEDS.get(s, []))
    return [s for s in STEPS if s in out]


class Files:
    """Where one data size lives (a folder under the scratch directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.karpathy = root / "dataset_coco.json"
        self.questions = {s: root / f"v2_OpenEnded_mscoco_{s}2014_questions.json" for s in ("train", "val")}
        self.annotations = {s: root / f"v2_mscoco_{s}2014_annotations.json" for s in ("train", "val")}
        self.store = root / "store"


def generate(files: Files, sizes: data.Sizes) -> None:
    files.root.mkdir(parents=True, exist_ok=True)
    data.write_karpathy(files.karpathy, sizes)
    for split in ("train", "val"):
        data.write_vqa(files.questions[split], files.annotations[split], sizes, split)


def _epoch(loader) -> dict[str, int]:
    """One pass with a no-op model: the batches are made (store reads, featurize, collate) and dropped."""
    batches = items = 0
    for batch in loader:
        batches += 1
        items += int(batch["captions" if "captions" in batch else "features"].shape[0])  # caption rows / questions
    return {"batches": batches, "items": items}


def run_store(files: Files, sizes: data.Sizes, todo: list[str], meter: Meter) -> None:
    from butd.shards import FeatureStore, ShardWriter, verify_store

    shutil.rmtree(files.store, ignore_errors=True)  # an earlier round's
    with meter.step("store-write") as info:
        with ShardWriter(files.store, "region", source={"dataset": "bench/scale.py"}) as writer:
            for image_id, record in data.store_records(sizes):
                writer.add(image_id, record)
        info["records"] = sizes.images
    info["bytes"] = sum(f.stat().st_size for f in files.store.iterdir())
    if "store-open" in todo:
        with meter.step("store-open"):
            store = FeatureStore(files.store)
            assert len(store) == sizes.images
    if "store-reads" in todo:
        store = FeatureStore(files.store)
        keys = [str(i) for i in data.image_ids(sizes)]
        picks = [keys[i] for i in np.random.default_rng(7).integers(0, len(keys), READS)]
        with meter.step("store-reads") as info:
            total = 0.0
            for key in picks:
                total += float(store[key]["features"].sum())
            info["reads"] = READS
    if "verify" in todo:
        with meter.step("verify") as info:
            report = verify_store(files.store)
            assert report.ok, report.problems[:3]
            info["records"] = report.records
    if "resume-scan" in todo:
        _resume_scan(files, sizes, meter)


def _resume_scan(files: Files, sizes: data.Sizes, meter: Meter) -> None:
    """An extraction killed half-way: the first half of the shards committed, 1% of the rest in failures.jsonl.
    Timed: what ``run_extraction`` does before any image is sent to a worker."""
    from butd.extract.plan import pending_batches, sorted_unique
    from butd.extract.sources import SourceItem
    from butd.shards import ShardWriter
    from butd.shards.folder import FAILURES_NAME, FailureLog, StoreFolder, inspect
    from scale_lib.null_extractor import NullConfig

    out = files.root / "resume"
    shards = sorted(files.store.glob("shard-*.lmdb"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    half = max(1, len(shards) // 2)
    for s in shards[:half]:
        shutil.copyfile(s, out / s.name)
    cfg, shard_size, batch_size = NullConfig(), 1000, 8  # the store was written in shards of 1000
    settings = {"extractor": {"name": cfg.name, "config": asdict(cfg)}, "shard_size": shard_size,
                "batch_size": batch_size}
    with StoreFolder(out) as folder:
        folder.record_settings(settings)
    keys = sorted(str(i) for i in data.image_ids(sizes))
    rest = keys[half * shard_size:]
    with open(out / FAILURES_NAME, "w") as f:
        for key in rest[::100]:
            f.write(json.dumps({"image_id": key, "where": f"/images/{key}.jpg", "reason": "truncated"}) + "\n")
    source = [SourceItem(k, f"/images/{k}.jpg") for k in keys]
    random.Random(0).shuffle(source)  # a source lists files in directory order, not sorted
    with meter.step("resume-scan") as info:
        items = sorted_unique(source)
        assert inspect(out, settings) == "partial"
        writer = ShardWriter(out, "region", max_records=shard_size, resume=True)
        failed = FailureLog(out / FAILURES_NAME)
        done, batches = pending_batches(items, writer, failed, shard_size, batch_size)
        info.update(done=done, batches_left=len(batches))
    writer.abort()
    shutil.rmtree(out)


def _data_config(cls: Any, yaml_file: str) -> Any:
    """The ``data`` section of a shipped recipe (configs/*.yaml) as the component's own config."""
    import yaml

    from butd.config import load_config

    root = Path(__file__).resolve().parents[2]
    return load_config(cls, None, yaml.safe_load((root / "configs" / yaml_file).read_text())["data"])


def run_caption(files: Files, sizes: data.Sizes, todo: list[str], meter: Meter) -> None:
    import torch
    from torch.utils.data import DataLoader

    from butd.datasets.captions import CaptionDataset, DataConfig, collate_captions, load_karpathy, split_images
    from butd.datasets.vocab import Vocab
    from butd.evaluate.cider import CiderD
    from butd.shards import FeatureStore
    from butd.train.distributed import ShardedEpochSampler
    from butd.train.scst import ScstConfig, reward_refs

    torch.set_num_threads(1)  # as in DataLoader worker processes; spinning idle threads would blur CPU time
    cfg = _data_config(DataConfig, "updown.yaml")
    with meter.step("karpathy-load") as info:
        images = load_karpathy(files.karpathy)
        train, val = split_images(images, "train", cfg.train_splits), split_images(images, "val")
        info.update(images=len(images), train_captions=sum(len(im.tokens) for im in train))
    del images
    if "caption-vocab" in todo:
        with meter.step("caption-vocab") as info:
            vocab = Vocab.build((t for im in train for t in im.tokens), cfg.min_count)
            info["words"] = len(vocab)
    if "cider-df" in todo:
        with meter.step("cider-df") as info:  # as train/caption.py builds the SCST reward's scorer
            scorer = CiderD(reward_refs([im.refs for im in train], ScstConfig().reward_eos))
            info["ngrams"] = int(scorer.to_arrays()["df_keys"].size)
        del scorer
    if "caption-dataset" in todo:
        store = FeatureStore(files.store)
        with meter.step("caption-dataset") as info:
            train_ds = CaptionDataset(train, store, vocab, cfg)
            val_ds = CaptionDataset(val, store, vocab, cfg, per_caption=False)
            info.update(train_items=train_ds.rows_per_epoch, val_items=len(val_ds))
    if "caption-epoch" in todo:
        loader = DataLoader(train_ds, batch_size=CAPTION_BATCH, sampler=ShardedEpochSampler(len(train_ds), 0),
                            collate_fn=collate_captions, generator=torch.Generator().manual_seed(0))
        with meter.step("caption-epoch") as info:
            info.update(_epoch(loader))


def run_vqa(files: Files, sizes: data.Sizes, todo: list[str], meter: Meter) -> None:
    import torch
    from torch.utils.data import DataLoader

    from butd.datasets.vqa import (
        VQADataConfig,
        VQADataset,
        build_answer_set,
        build_question_vocab,
        candidate_examples,
        compared_forms,
        join_store,
        load_vqa,
        soft_target,
    )
    from butd.shards import FeatureStore
    from butd.train.distributed import ShardedEpochSampler

    torch.set_num_threads(1)
    # answers_from train+val: the reference's rule, under which VQA v2 has 3,129 candidates
    cfg = _data_config(VQADataConfig, "vqa.yaml")
    cfg = VQADataConfig(**{**asdict(cfg), "answers_from": "train+val"})
    with meter.step("vqa-load") as info:
        train = load_vqa(files.questions["train"], files.annotations["train"])
        val = load_vqa(files.questions["val"], files.annotations["val"])
        info.update(train=len(train), val=len(val))
    store = FeatureStore(files.store)
    with meter.step("vqa-join"):
        train, _ = join_store(train, store, cfg.skip_missing)
        val, _ = join_store(val, store, cfg.skip_missing)
    if "question-vocab" in todo:
        with meter.step("question-vocab") as info:
            vocab = build_question_vocab(train)
            info["words"] = len(vocab)
    with meter.step("vqa-answers") as info:
        answers = build_answer_set(candidate_examples(train, val, cfg.answers_from), cfg.min_answer_count)
        info["candidates"] = len(answers)
    if "vqa-soft-scores" in todo:
        with meter.step("vqa-soft-scores") as info:
            compared = compared_forms(answers)
            targets = [soft_target(ex, compared) for ex in [*train, *val]]
            info["nonzero"] = int(sum(t[0].size for t in targets))
        del targets
    if "vqa-dataset" in todo:
        with meter.step("vqa-dataset") as info:
            train_ds = VQADataset(train, store, vocab, answers, cfg)
            val_ds = VQADataset(val, store, vocab, answers, cfg)
            info.update(train_items=len(train_ds), val_items=len(val_ds))
    if "vqa-epoch" in todo:
        loader = DataLoader(train_ds, batch_size=VQA_BATCH, sampler=ShardedEpochSampler(len(train_ds), 0),
                            generator=torch.Generator().manual_seed(0))
        with meter.step("vqa-epoch") as info:
            info.update(_epoch(loader))


def run_ray(files: Files, sizes: data.Sizes, todo: list[str], meter: Meter) -> None:
    import logging

    import ray

    from butd.extract.runner import _ray_quiet, ray_runtime_env, run_extraction
    from butd.extract.sources import iter_source
    from scale_lib.null_extractor import NullConfig

    root, out = files.root / "images", files.root / "ray-store"
    for folder in (root, out):  # an earlier round's
        shutil.rmtree(folder, ignore_errors=True)
    broken = data.write_images(root, sizes.ray_images)
    env = ray_runtime_env()
    bench_dir = str(Path(__file__).resolve().parents[1])
    env["env_vars"]["PYTHONPATH"] = os.pathsep.join([env["env_vars"]["PYTHONPATH"], bench_dir])
    env["worker_process_setup_hook"] = "scale_lib.null_extractor.register"
    # as butd.extract.runner.start_local_ray, plus the hook that names the null extractor in the workers
    with _ray_quiet(False):
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=False, runtime_env=env)
    try:
        with meter.step("ray-extract") as info:
            # butd extract's defaults: 1 CPU worker, shards of 1000, batches of 8
            s = run_extraction(iter_source("folder", root), NullConfig(), out, progress=False)
            assert (s.written, s.failed) == (sizes.ray_images - broken, broken), s
            info.update(images=s.total, failed=s.failed, images_per_s=s.images_per_s,
                        ms_per_image=1000 / max(s.images_per_s, 1e-9))
    finally:
        ray.shutdown()


RUNNERS = {"store": run_store, "caption": run_caption, "vqa": run_vqa, "ray": run_ray}
