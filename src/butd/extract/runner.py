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
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from butd.errors import UserError
from butd.extract.images import ImageDecodeError, load_image
from butd.extract.registry import build_extractor, extractor_config
from butd.extract.resume import FAILURES_NAME, RUN_NAME, Summary, check_run_settings, check_store, read_failures
from butd.extract.sources import SourceItem

__all__ = ["FAILURES_NAME", "RUN_NAME", "Summary", "check_store", "run_extraction", "start_local_ray"]

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


class ModelWorker:
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
def _sorted_unique(items: Iterable[SourceItem]) -> list[SourceItem]:
    by_id: dict[str, SourceItem] = {}
    for it in items:
        if it.image_id in by_id and by_id[it.image_id].path != it.path:
            raise UserError(f"image id {it.image_id!r} names two files", f"{by_id[it.image_id].path}, {it.path}",
                            "keep one of them, or rename one (ids are file names without suffix)", usage=True)
        by_id.setdefault(it.image_id, it)
    return [by_id[k] for k in sorted(by_id)]


def pending_batches(items: list[SourceItem], writer: Any, failed: set[str], shard_size: int,
                    batch_size: int) -> tuple[int, list[list[SourceItem]]]:
    """(images already done, the batches left): a chunk of ``shard_size`` whose every image is in the store
    (``writer``) or in ``failed`` is skipped whole; any other chunk is cut into its fixed batches again."""
    done = sum(1 for it in items if it.image_id in writer or it.image_id in failed)
    batches: list[list[SourceItem]] = []
    for c in range(0, len(items), shard_size):
        chunk = items[c:c + shard_size]
        if all(it.image_id in writer or it.image_id in failed for it in chunk):
            continue
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    return done, batches


def _plan_workers(ray: Any, cfg: Any, workers: int | None,
                  threads: int | None = None) -> tuple[str, int, dict[str, float], int]:
    """(device, number of actors, actor resources, torch threads per actor)."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    device = cfg.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if gpus < 1:
            raise UserError("the Ray cluster has no GPU", f"--device {device}", "pass --device cpu (or auto)",
                            usage=True)
        n = workers or gpus
        return "cuda", n, {"num_gpus": 1, "num_cpus": 1}, threads or 2
    n = workers or 1
    threads = threads or max(1, (cpus - 1) // n)  # leave one CPU to decoding
    return "cpu", n, {"num_cpus": threads}, threads


def run_extraction(source: Iterable[SourceItem], extractor_cfg: Any, out: str | Path, *,
                   address: str | None = None, workers: int | None = None, shard_size: int = 1000,
                   batch_size: int = 8, progress: bool = True, source_info: dict[str, Any] | None = None,
                   max_in_flight: int | None = None, decode_cpus: float = 1.0, threads: int | None = None,
                   verbose: bool = False, log: Callable[[str], None] | None = None) -> Summary:
    """Extract features for every item of ``source`` into the store at ``out`` (resumable, kill-safe).

    ``address``: join that Ray cluster; default starts a private local Ray on 127.0.0.1.
    ``workers``: model actors (default: one per GPU, or 1 on CPU); ``threads``: torch threads per actor
    (default: the cluster's CPUs less one, split between CPU actors). Records are bitwise reproducible for
    the same inputs, settings and thread count. Broken images go to failures.jsonl.
    """
    import ray

    from butd.shards import ShardWriter

    t_start = time.perf_counter()
    out = Path(out)
    items = _sorted_unique(source)
    if shard_size < 1 or batch_size < 1:
        raise UserError("shard_size and batch_size must be >= 1", f"{shard_size}, {batch_size}", "pass positive sizes",
                        usage=True)
    done = check_store(out, extractor_cfg, shard_size, batch_size, len(items))
    if done is not None:
        return done
    if not items:
        raise UserError("no images to extract", out, "check --root and --dataset", usage=True)
    created = not out.exists()

    own_ray = not ray.is_initialized()
    if own_ray:
        with _ray_quiet(verbose):
            if address:
                ray.init(address=address, logging_level=logging.WARNING if verbose else logging.ERROR,
                         configure_logging=False, log_to_driver=verbose, runtime_env=ray_runtime_env())
            else:
                start_local_ray(max(os.cpu_count() or 1, (workers or 1) * (threads or 1) + 1), verbose)
    try:
        return _run(ray, ShardWriter, items, extractor_cfg, out, workers, shard_size, batch_size, progress,
                    source_info or {}, max_in_flight, decode_cpus, threads, t_start, log)
    except NothingExtracted as exc:
        if created:  # nothing half-written: a store folder this call made holds no record
            shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"no image could be extracted ({exc.failed} failed; first: {exc.first})", out,
                        "check the images (and --dataset / --root)") from None
    finally:
        if own_ray:
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


def _run(ray: Any, writer_cls: Any, items: list[SourceItem], cfg: Any, out: Path,
         workers: int | None, shard_size: int, batch_size: int, progress: bool, source_info: dict[str, Any],
         max_in_flight: int | None, decode_cpus: float, threads: int | None, t_start: float,
         log: Callable[[str], None] | None = None) -> Summary:
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

    out.mkdir(parents=True, exist_ok=True)
    failures_path = out / FAILURES_NAME
    failed = read_failures(failures_path)
    extractor_meta = manifest_entry(recorded, info)
    source_meta = {**source_info, "num_images": len(items)}
    check_run_settings(out, {"extractor": extractor_meta, "shard_size": shard_size,
                              "batch_size": batch_size})
    written = processed = 0
    # No `with writer`: its abort-on-exception would delete shards committed by earlier runs. On an
    # exception (Ctrl-C, a dead actor) the directory is left as after a crash, ready to resume.
    writer = writer_cls(out, info["kind"], max_records=shard_size, extractor=extractor_meta,
                        source=source_meta, resume=True)
    with open(failures_path, "a", encoding="utf-8") as ffile:
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
                    path = next(it.path for it in batch if it.image_id == image_id)
                    ffile.write(json.dumps({"image_id": image_id, "path": path, "reason": reason}) + "\n")
                    ffile.flush()
                    failed.add(image_id)
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
        writer.abort()
        first = ""
        if failures_path.exists() and failures_path.read_text().strip():
            row = json.loads(failures_path.read_text().splitlines()[0])
            first = f"{Path(row['path']).name}: {row['reason']}"
        raise NothingExtracted(len(failed), first)
    writer.close()  # last shard, index, manifest (written last)
    for a in actors:
        ray.kill(a)
    t_end = time.perf_counter()
    rate = processed / max(t_end - t_ready, 1e-9)
    return Summary(str(out), len(items), written, done, len(failed), t_end - t_start, rate, n, True)
