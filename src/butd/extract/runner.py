"""Distributed extraction with Ray: decode tasks on CPUs feed model actors; records go into a feature store.

Determinism / kill-safety: images are sorted by id and cut into chunks of ``shard_size``; each chunk is
cut into fixed batches, so the model always sees the same batches. Results are consumed strictly in
order, so the writer receives the same record sequence in every run and rolls shards at the same
places. A rerun adopts committed shards (ShardWriter resume), recomputes any chunk that is not fully
done and adds only the missing records; ``failures.jsonl`` is append-only and de-duplicated the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from butd.devices import resolve_device
from butd.errors import UserError
from butd.extract.images import ImageDecodeError, load_image
from butd.extract.plan import pending_batches, sorted_unique
from butd.extract.registry import build_extractor, extractor_config
from butd.extract.sources import SourceItem
from butd.extract.summary import Summary
from butd.extract.worker_stats import WorkerStats, timed, worker_memory
from butd.shards.folder import FAILURES_NAME, StoreFolder, inspect

__all__ = ["FAILURES_NAME", "Summary", "pending_batches", "run_extraction", "sorted_unique", "start_local_ray"]

log = logging.getLogger(__name__)
Decoded = tuple[str, "dict[str, Any] | None", "np.ndarray | None", "str | None"]  # id, prep, boxes, failure


def ray_runtime_env() -> dict[str, Any]:
    """What Ray worker processes need: butd importable even when it is not installed, no usage stats.

    Passed to ``ray.init(runtime_env=...)``; this process's environment is never changed.
    """
    src = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([src, *[p for p in paths if p != src]]),
                         "RAY_USAGE_STATS_ENABLED": "0"}}


def start_local_ray(num_cpus: int, verbose: bool = True) -> None:
    """Start a private single-node Ray bound to 127.0.0.1 (never joins another cluster: address="local").

    ``verbose=False`` keeps Ray's notices and its workers' output out of the terminal."""
    import ray

    with _ray_quiet(verbose):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING if verbose else logging.ERROR, log_to_driver=verbose,
                 configure_logging=False, runtime_env=ray_runtime_env())


# -- work run in Ray processes -----------------------------------------------------------------------
_PREP_CACHE: dict[str, Callable[[np.ndarray], dict[str, Any]]] = {}


@dataclass(frozen=True)
class BuiltPreprocess:
    """Fallback for extractors without ``preprocessor()``: builds the extractor once per decode process."""

    name: str
    config: dict[str, Any]

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        key = json.dumps([self.name, self.config], sort_keys=True, default=str)
        if key not in _PREP_CACHE:
            _PREP_CACHE[key] = build_extractor(self.name, extractor_config(self.name, self.config)).preprocess
        return _PREP_CACHE[key](image)


def decode_batch(items: list[tuple[str, str, np.ndarray | None]],
                 prep: Callable[[np.ndarray], dict[str, Any]]) -> list[Decoded]:
    """Read + decode + preprocess each image; a broken one becomes (id, None, None, reason)."""
    min_side = getattr(prep, "draft_min_side", None)  # opt-in: nets that downscale anyway (grid nets)
    out: list[Decoded] = []
    for image_id, path, boxes in items:
        try:
            img = load_image(path, min_side=min_side)
            data = prep(img.array)
            if img.array.shape[:2] != (img.height, img.width):  # draft-decoded: report full-size geometry
                data["image_w"], data["image_h"] = img.width, img.height
            out.append((image_id, data, boxes, None))
        except ImageDecodeError as e:
            out.append((image_id, None, None, e.reason))
        except Exception as e:  # a preprocess bug must not kill the run: log it as a failure
            out.append((image_id, None, None, f"preprocess failed: {type(e).__name__}: {e}"))
    return out


class ModelWorker(WorkerStats):
    """Ray actor body: builds the extractor once; ``run``: decoded items -> (id, record | None, reason)."""

    def __init__(self, name: str, config: dict[str, Any], device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.extractor = build_extractor(name, extractor_config(name, config))
        self.extractor.to(device)

    def info(self) -> dict[str, Any]:
        ex = self.extractor
        prep = ex.preprocessor() if hasattr(ex, "preprocessor") else None
        return {"name": ex.name, "kind": ex.kind, "details": ex.config_dict(),
                "weights_sha256": ex.weights_sha256, "preprocessor": prep}

    @timed  # time in the model: WorkerStats.stats() reports it with the peak memory
    def run(self, decoded: list[Decoded]) -> list[tuple[str, dict[str, np.ndarray] | None, str | None]]:
        ok = [d for d in decoded if d[1] is not None]
        records: dict[str, dict[str, np.ndarray]] = {}
        errors: dict[str, str] = {}
        if ok:
            boxes = [d[2] for d in ok]
            try:
                for d, rec in zip(ok, self.extractor.extract([d[1] for d in ok], boxes)):
                    records[d[0]] = rec
            except Exception:  # isolate the culprit: retry one image at a time
                for d in ok:
                    try:
                        records[d[0]] = self.extractor.extract([d[1]], [d[2]])[0]
                    except Exception as e:
                        errors[d[0]] = f"extract failed: {type(e).__name__}: {e}"
        return [(d[0], records.get(d[0]), d[3] or errors.get(d[0])) for d in decoded]


# -- driver -------------------------------------------------------------------------------------------
def _plan_workers(ray: Any, cfg: Any, workers: int | None,
                  threads: int | None = None) -> tuple[str, int, dict[str, float], int]:
    """(device, number of actors, actor resources, torch threads per actor)."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    try:
        device = resolve_device(cfg.device, cuda_available=gpus > 0)
    except UserError:
        raise UserError("the Ray cluster has no GPU", f"--device {cfg.device}", "pass --device cpu (or auto)",
                        usage=True) from None
    if device.startswith("cuda"):
        n = workers or gpus
        return "cuda", n, {"num_gpus": 1, "num_cpus": 1}, threads or 2
    n = workers or 1
    threads = threads or max(1, (cpus - 1) // n)  # leave one CPU to decoding
    return "cpu", n, {"num_cpus": threads}, threads


def _settings(cfg: Any, shard_size: int, batch_size: int) -> dict[str, Any]:
    """What a resume must match (the extractor's config as given, and the work units)."""
    return {"extractor": {"name": cfg.name, "config": asdict(cfg)}, "shard_size": shard_size, "batch_size": batch_size}


def run_extraction(source: Iterable[SourceItem], extractor_cfg: Any, out: str | Path, *,
                   address: str | None = None, workers: int | None = None, shard_size: int = 1000,
                   batch_size: int = 8, progress: bool = True, source_info: dict[str, Any] | None = None,
                   max_in_flight: int | None = None, decode_cpus: float = 1.0, threads: int | None = None,
                   verbose: bool = False, log: Callable[[str], None] | None = None) -> Summary:
    """Extract features for every item of ``source`` into the store at ``out`` (resumable, kill-safe).

    ``address``: join that Ray cluster; default starts a private local Ray on 127.0.0.1.
    ``workers``: model actors (default: one per GPU, or 1 on CPU); ``threads``: torch threads per actor
    (default: the cluster's CPUs less one, split between CPU actors). Records are bitwise reproducible for
    the same inputs, settings and thread count. Broken images go to failures.jsonl. The store folder is
    locked while this runs (a second writer stops with one line); a finished store of the same settings
    makes this a no-op.
    """
    t_start = time.perf_counter()
    out = Path(out)
    items = sorted_unique(source)
    if shard_size < 1 or batch_size < 1:
        raise UserError("shard_size and batch_size must be >= 1", f"{shard_size}, {batch_size}", "pass positive sizes",
                        usage=True)
    settings = _settings(extractor_cfg, shard_size, batch_size)
    if inspect(out, settings) == "finished":
        return _finished(out, len(items))
    if not items:
        raise UserError("no images to extract", out, "check --root and --dataset", usage=True)
    with StoreFolder(out) as folder:
        if inspect(out, settings) == "finished":  # another writer finished it while this one waited
            return _finished(out, len(items))
        with _ray(address, workers, threads, verbose) as ray:
            try:
                return _run(ray, folder, items, extractor_cfg, workers, shard_size, batch_size, progress,
                            source_info or {}, max_in_flight, decode_cpus, threads, t_start, log)
            except NothingExtracted as exc:
                raise UserError(f"no image could be extracted ({exc.failed} failed; first: {exc.first})", out,
                                "check the images (and --dataset / --root)") from None


def _finished(out: Path, total: int) -> Summary:
    from butd.shards import read_manifest
    from butd.shards.folder import FailureLog

    failed = len(FailureLog(out / FAILURES_NAME))
    return Summary(str(out), total, 0, int(read_manifest(out)["num_records"]), failed, 0.0, 0.0, 0, True)


@contextlib.contextmanager
def _ray(address: str | None, workers: int | None, threads: int | None, verbose: bool):
    """The Ray this extraction runs on: the caller's (already initialised), ``address``, or a private local one
    (shut down afterwards)."""
    import ray

    own = not ray.is_initialized()
    if own:
        with _ray_quiet(verbose):
            if address:
                ray.init(address=address, logging_level=logging.WARNING if verbose else logging.ERROR,
                         configure_logging=False, log_to_driver=verbose, runtime_env=ray_runtime_env())
            else:
                start_local_ray(max(os.cpu_count() or 1, (workers or 1) * (threads or 1) + 1), verbose)
    try:
        yield ray
    finally:
        if own:
            ray.shutdown()


class NothingExtracted(RuntimeError):
    def __init__(self, failed: int, first: str) -> None:
        super().__init__(f"no image could be extracted ({failed} failed)")
        self.failed, self.first = failed, first


@contextlib.contextmanager
def _ray_quiet(verbose: bool):
    """Ray's own start-up notices (token authentication, ...) stay out of the terminal unless ``verbose``;
    the ``ray`` logger's level is restored afterwards."""
    ray_log = logging.getLogger("ray")
    before = ray_log.level
    if not verbose:
        ray_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_log.setLevel(before)


def manifest_entry(config: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The store manifest's ``extractor``: ``asdict(config)`` as given (``config_from_manifest`` gives it
    back equal), the built extractor's derived ``details`` (feature width, normalisation...) and weights hash."""
    return {"name": info["name"], "config": config, "details": info["details"],
            "weights": weights_words(config.get("weights"), info["weights_sha256"]),
            "weights_sha256": info["weights_sha256"]}


def weights_words(given: str | None, sha256: str | None) -> str:
    """What the manifest says about the weights in words: "random" (meaningless features), "imagenet",
    "shipped" (bundled with the extractor) or the file name."""
    if sha256 is None or given == "random":
        return "random"
    if given in (None, "imagenet"):
        return "shipped" if given is None else "imagenet"
    return Path(given).name


def _run(ray: Any, folder: StoreFolder, items: list[SourceItem], cfg: Any,
         workers: int | None, shard_size: int, batch_size: int, progress: bool, source_info: dict[str, Any],
         max_in_flight: int | None, decode_cpus: float, threads: int | None, t_start: float,
         log: Callable[[str], None] | None = None) -> Summary:
    """Schedule the Ray work and hand every record to the folder's writer (the folder owns the rest)."""
    from tqdm import tqdm

    device, n, resources, threads = _plan_workers(ray, cfg, workers, threads)
    if log is not None:  # the device "auto" chose, said once
        log(f"device: {device} ({n} model actor(s))")
    recorded = asdict(cfg)  # the manifest records the config as given; config_from_manifest gives it back
    cfg = dataclasses.replace(cfg, device=device)  # builders see the resolved device, never "auto"
    actor_cls = ray.remote(**resources)(ModelWorker)
    actors = [actor_cls.remote(cfg.name, asdict(cfg), device, threads) for _ in range(n)]
    try:
        info = ray.get([a.info.remote() for a in actors])[0]
    except ray.exceptions.RayError as e:  # the model did not build: its own error in one line, not Ray's 100
        causes = [ln.strip() for ln in str(e).splitlines() if re.match(r"^\s*[\w.]*(Error|Exception): ", ln)]
        raise UserError(f"the {cfg.name} extractor could not start ({(causes or [type(e).__name__])[-1][:200]})",
                        f"--weights {cfg.weights}", "check --weights and --device", usage=True) from None
    prep = info["preprocessor"] or BuiltPreprocess(cfg.name, asdict(cfg))
    decode = ray.remote(num_cpus=decode_cpus)(decode_batch)
    ray.get(decode.remote([], prep))  # warm a decode worker process before timing
    t_ready = time.perf_counter()

    failed = folder.failures
    extractor_meta = manifest_entry(recorded, info)
    folder.record_settings({"extractor": extractor_meta, "shard_size": shard_size, "batch_size": batch_size})
    writer = folder.writer(info["kind"], max_records=shard_size, extractor=extractor_meta,
                           source={**source_info, "num_images": len(items)})
    written = processed = 0
    done, batches = pending_batches(items, writer, failed, shard_size, batch_size)
    window: deque[tuple[list[SourceItem], Any]] = deque()
    limit = max_in_flight or 2 * n + 2
    bar = tqdm(total=len(items), initial=done, unit="img", disable=not progress, dynamic_ncols=True,
               desc=f"extract {cfg.name}")

    def consume() -> None:
        nonlocal written, processed
        batch, ref = window.popleft()
        fresh = 0
        for image_id, record, reason in ray.get(ref):
            if record is not None and image_id not in writer:
                writer.add(image_id, record)
                written += 1
                fresh += 1
            elif record is None and image_id not in failed:
                failed.add(image_id, next(it.path for it in batch if it.image_id == image_id), reason)
                fresh += 1
        processed += len(batch)
        bar.update(fresh)

    for i, batch in enumerate(batches):
        while len(window) >= limit:
            consume()
        dref = decode.remote([(it.image_id, it.path, it.boxes) for it in batch], prep)
        window.append((batch, actors[i % n].run.remote(dref)))
    while window:
        consume()
    bar.close()
    if len(writer) == 0:
        first = failed.first()
        raise NothingExtracted(len(failed), f"{Path(first['where']).name}: {first['reason']}" if first else "")
    writer.close()  # last shard, index, manifest (written last)
    t_end = time.perf_counter()
    memory = worker_memory(ray.get([a.stats.remote() for a in actors]), t_end - t_ready)
    for a in actors:
        ray.kill(a)
    rate = processed / max(t_end - t_ready, 1e-9)
    return Summary(str(folder.path), len(items), written, done, len(failed), t_end - t_start, rate, n, True, **memory)
