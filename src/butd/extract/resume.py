"""What a store folder already holds, checked before any worker starts (and again once they run).

A finished store (manifest.json) of the same extractor settings makes a rerun a no-op; an unfinished
one (run.json, written when extraction starts) resumes only with the same settings. Anything else is
refused with one line naming the differing keys, before Ray starts, so nothing is half-written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from butd.errors import UserError

__all__ = ["FAILURES_NAME", "RUN_NAME", "Summary", "check_run_settings", "check_store", "differing_settings",
           "read_failures"]

FAILURES_NAME = "failures.jsonl"
RUN_NAME = "run.json"  # settings of an unfinished store, checked on resume


@dataclass
class Summary:
    """What a run did. ``images_per_s`` counts images processed after the model actors were ready."""

    out: str
    total: int
    written: int
    already_done: int
    failed: int
    elapsed_s: float
    images_per_s: float
    workers: int
    complete: bool
    # per model worker, in actor order; empty when no worker ran (a finished store, nothing to do)
    peak_rss_bytes: list[int] = field(default_factory=list)  # each actor process's peak resident memory
    cuda_max_allocated_bytes: list[int] = field(default_factory=list)  # torch.cuda.max_memory_allocated
    busy_fraction: list[float] = field(default_factory=list)  # share of the timed run spent in the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0: every image is in the store; 3: some could not be read; 1: none is."""
        if self.written + self.already_done == 0:
            return 1
        return 3 if self.failed else 0

    def lines(self) -> list[str]:
        """The human summary ``butd extract`` prints (``--json`` prints :meth:`to_dict`)."""
        head = f"{self.out}: {self.written} written, {self.already_done} already done, {self.failed} failed"
        out = [head + f" of {self.total} images"]
        if self.written:
            out.append(f"{self.images_per_s:.1f} images/s on {self.workers} worker(s), {self.elapsed_s:.0f} s in all")
        if self.peak_rss_bytes:
            mem = "peak memory per worker: RSS " + ", ".join(_mib(b) for b in self.peak_rss_bytes)
            if self.cuda_max_allocated_bytes:
                mem += "; CUDA max allocated " + ", ".join(_mib(b) for b in self.cuda_max_allocated_bytes)
            busy = ", ".join(f"{100 * f:.0f}%" for f in self.busy_fraction)
            out.append(mem + (f"; in the model {busy} of the time" if busy else ""))
        if self.failed:
            out.append(f"unreadable images and why: {Path(self.out) / FAILURES_NAME}")
        return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def read_failures(path: Path) -> set[str]:
    """Ids already in failures.jsonl; a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return {json.loads(line)["image_id"] for line in keep.decode("utf-8").splitlines() if line.strip()}


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


_WHERE_IT_RUNS = {"extractor.config.device"}  # changes where the extractor runs, not what it computes


def differing_settings(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two settings dicts (``extractor.config.image_size``, ...)."""
    a, b = _flat(_plain(have)), _flat(_plain(want))
    missing = object()
    diff = {k for k in {*a, *b} if k not in _WHERE_IT_RUNS and a.get(k, missing) != b.get(k, missing)}
    return sorted(k for k in diff if not any(k.startswith(d + ".") for d in diff))  # a missing block: once


def _refuse_other_settings(out: Path, diff: list[str], finished: bool) -> None:
    what = "finished store" if finished else "store being extracted"
    raise UserError(f"the {what} was made with other settings: {', '.join(diff)}", out,
                    "rerun with the store's settings (`butd shards info --json`) or choose a new --out", usage=True)


def check_store(out: str | Path, cfg: Any, shard_size: int, batch_size: int, total: int) -> Summary | None:
    """Before any worker starts: a finished store of the same settings is a no-op (its Summary); other
    settings, another extractor or a folder that is not a store are refused with one line."""
    from butd.shards import read_manifest

    out = Path(out)
    config = asdict(cfg)
    if (out / "manifest.json").exists():
        ext = read_manifest(out).get("extractor") or {}
        if ext.get("name") != cfg.name:
            raise UserError(f"the store was made by extractor {ext.get('name')!r}, not {cfg.name!r}", out,
                            f"choose a new --out, or pass --extractor {ext.get('name')}", usage=True)
        diff = differing_settings({"extractor": {"config": ext.get("config") or {}}},
                                  {"extractor": {"config": config}})
        if diff:
            _refuse_other_settings(out, diff, True)
        man = read_manifest(out)
        failed = len(read_failures(out / FAILURES_NAME))
        return Summary(str(out), total, 0, int(man["num_records"]), failed, 0.0, 0.0, 0, True)
    if (out / RUN_NAME).exists():
        have = json.loads((out / RUN_NAME).read_text())
        ext = have.get("extractor") or {}
        if ext.get("name") != cfg.name:
            raise UserError(f"the store being extracted uses extractor {ext.get('name')!r}, not {cfg.name!r}",
                            out, f"choose a new --out, or pass --extractor {ext.get('name')}", usage=True)
        keys = ("shard_size", "batch_size")
        diff = differing_settings({"extractor": {"config": ext.get("config")}, **{k: have.get(k) for k in keys}},
                                  {"extractor": {"config": config}, "shard_size": shard_size,
                                   "batch_size": batch_size})
        if diff:
            _refuse_other_settings(out, diff, False)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("--out is neither empty nor a feature store", out, "choose a new or empty directory",
                        usage=True)
    return None


def check_run_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record what a store is being built with (run.json); a resume with other settings is refused."""
    path = out / RUN_NAME
    want = _plain(settings)
    if path.exists():
        diff = differing_settings(json.loads(path.read_text()), want)
        if diff:
            _refuse_other_settings(out, diff, False)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(want, sort_keys=True, indent=1))
    os.replace(tmp, path)


