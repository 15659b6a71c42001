"""torch.distributed (DDP) plumbing shared by every trainer; world size 1 runs the very same code.

A process learns its place from the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); without them it is rank 0 of 1 and no process group is created. The
backend is ``nccl`` on CUDA and ``gloo`` on CPU. Everything exchanged between ranks travels as tensors of
raw bytes (JSON text or ``.npy`` data, both read without pickle).

Batches: ``LoopConfig.batch_size`` is the *global* batch; each rank takes ``batch_size / world_size``
samples (:func:`per_rank_batch`). :class:`ShardedEpochSampler` draws one permutation per (seed, epoch), the
same on every rank, and deals it out rank by rank, so the union of the ranks' batches at step ``k`` is
exactly batch ``k`` of a single-process run with the same seed.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from butd.errors import UserError

__all__ = ["DistInfo", "ShardedEpochSampler", "all_reduce_sum", "any_rank", "barrier", "broadcast_bytes",
           "broadcast_json", "check_shared_dir", "current", "finish", "gather_json", "gathered_metrics",
           "launched_rank", "per_rank_batch", "rank_rng_states", "reduce_step", "restore_rank_rng", "setup",
           "shard_indices", "wrap_model"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics.jsonl and the console."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise UserError(f"environment variable {name} is not an integer", repr(raw),
                        "let torchrun set it") from None


def current() -> DistInfo:
    """Rank and world size of the initialised process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    if _env_int("WORLD_SIZE", 1) > 1:  # every rank would train alone and write the same files
        raise UserError("started by torchrun, but no process group", f"WORLD_SIZE={os.environ['WORLD_SIZE']}",
                        "call butd.train.distributed.setup(device) before training")
    return DistInfo()


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (nothing to do at world size 1).

    Returns this process's :class:`DistInfo` and its device (``cuda:LOCAL_RANK`` on CUDA).
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(), device
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible)",
                            "--nproc / --nproc-per-node", "start at most one process per GPU", usage=True)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_teardown)
    return DistInfo(rank, world, local), device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); needs no process group."""
    return _env_int("RANK", 0)


def finish() -> None:
    """The end of a trainer: every rank waits for rank 0's last writes, then all leave the group together
    (a rank tearing gloo down while another still talks to it can abort the process)."""
    if _active():
        dist.barrier()
        dist.destroy_process_group()


def check_shared_dir(path: Path) -> None:
    """Every rank must see the run directory rank 0 writes (checkpoints are read back on resume and between
    phases); on several machines that means a shared filesystem. Raises UserError otherwise."""
    if not _active():
        return
    marker = path / f".ddp-check-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    if current().is_main:
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text("", encoding="utf-8")
    dist.barrier()
    seen = marker.is_file()
    missing = any_rank(not seen)
    dist.barrier()
    if current().is_main:
        marker.unlink(missing_ok=True)
    if missing:
        raise UserError("the run directory is not shared by every process", path,
                        "put --out on a filesystem that all machines mount")


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Per-rank batch for a global batch; the global batch must divide evenly (the LR is never rescaled)."""
    if global_batch < 1 or global_batch % world_size:
        raise UserError(f"batch_size {global_batch} (the global batch) does not divide over {world_size} processes",
                        "batch_size", f"choose a multiple of {world_size} or another number of processes",
                        usage=True)
    return global_batch // world_size


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """This rank's share of ``n`` items (every ``world_size``-th from ``rank``), e.g. for sharded evaluation."""
    return list(range(info.rank, n, info.world_size))


class ShardedEpochSampler(Sampler[int]):
    """This rank's part of a permutation that depends only on (seed, epoch).

    The permutation is padded to a multiple of ``world_size`` by repeating its head (so every rank makes the
    same number of steps; no padding at world size 1) and rank ``r`` takes positions ``r, r + W, ...``.
    ``skip`` counts *global* samples already consumed (steps done x global batch), so a mid-epoch resume on
    any number of processes continues with the same remaining samples.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.total = math.ceil(n / world_size) * world_size if n else 0
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        if self.total > self.n:
            order = torch.cat([order, order[: self.total - self.n]])
        return iter(order[self.skip + self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return max(0, math.ceil((self.total - self.skip - self.rank) / self.world_size))


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when there are several processes, else ``model`` itself."""
    if info.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # a model with parameters that take no part in the loss says so (SAT without the selector); DDP must then
    # look for them, which costs one walk of the autograd graph per step, so only then
    unused = any(getattr(m, "has_unused_parameters", False) for m in model.modules())
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


# ------------------------------------------------------------------------------------------ collectives
def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (float64; the values themselves at world size 1)."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def reduce_step(losses: dict[str, Any], weight: float, info: DistInfo) -> tuple[dict[str, float], float]:
    """One training step's values over all ranks, and the factor for this rank's loss.

    ``weight`` is this rank's ``loss_weight`` (e.g. its token count when "loss" is a token mean). The
    logged "loss" is the global weighted mean, other values the mean over ranks. DDP averages gradients over
    ranks, so scaling this rank's loss by ``weight * world_size / total weight`` makes the gradient that of
    the global weighted mean, as on one process. On one process: the values themselves and 1.0.
    """
    values = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in losses.items()}
    if info.world_size == 1:
        return values, 1.0
    sums = all_reduce_sum([values["loss"] * weight, *values.values(), weight])
    logs = {k: s / info.world_size for k, s in zip(values, sums[1:-1], strict=True)}
    if sums[-1] <= 0:
        return logs, 1.0
    logs["loss"] = sums[0] / sums[-1]
    return logs, weight * info.world_size / sums[-1]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_bytes(data: bytes | None, src: int = 0) -> bytes:
    """``data`` from rank ``src`` on every rank (other ranks pass None)."""
    if not _active():
        return data or b""
    dev = _comm_device()
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=dev)
    dist.broadcast(size, src)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if dist.get_rank() == src and data
           else torch.empty(int(size.item()), dtype=torch.uint8, device=dev))
    if int(size.item()):
        dist.broadcast(buf, src)
    return bytes(buf.cpu().numpy().tobytes())


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """A JSON-able object from rank ``src`` on every rank."""
    data = json.dumps(obj).encode() if current().rank == src else None
    return json.loads(broadcast_bytes(data, src).decode())


def gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-able object, in rank order, on every rank."""
    if not _active():
        return [obj]
    dev = _comm_device()
    data = json.dumps(obj).encode()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64, device=dev))
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8, device=dev)
    mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else mine[:0]
    bufs = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in sizes]
    dist.all_gather(bufs, mine)
    return [json.loads(b[: int(s.item())].cpu().numpy().tobytes().decode()) for b, s in zip(bufs, sizes)]


def gathered_metrics(local: list[Any], compute: Callable[[list[Any]], dict[str, float]]) -> dict[str, float]:
    """Gather every rank's list of predictions, compute metrics once (rank 0), give them to every rank."""
    merged = [item for part in gather_json(local) for item in part]
    metrics = compute(merged) if current().is_main else None
    return broadcast_json(metrics)


def share_array_state(build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays built once on rank 0 and received by every other rank (``.npz`` bytes, read without pickle)."""
    data = None
    if current().is_main:
        buf = io.BytesIO()
        np.savez(buf, **build())
        data = buf.getvalue()
    with np.load(io.BytesIO(broadcast_bytes(data)), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


# ------------------------------------------------------------------------------------------ RNG per rank
def _rng_bytes() -> str:
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    return ",".join(base64.b64encode(s.numpy().tobytes()).decode() for s in states)


def rank_rng_states() -> list[str]:
    """Each rank's torch (and CUDA) RNG state, base64 text, in rank order (a collective call)."""
    return [str(s) for s in gather_json(_rng_bytes())]


def restore_rank_rng(states: Sequence[str] | None, info: DistInfo, seed: int, step: int) -> str:
    """Restore this rank's RNG from a checkpoint written by the same number of processes; otherwise reseed
    from (seed, rank, step) and say so. Returns the message ("" when nothing needed saying)."""
    if not states and info.world_size == 1:  # single-process checkpoint: restore_rng already did it
        return ""
    if states and len(states) == info.world_size:
        parts = [torch.frombuffer(bytearray(base64.b64decode(p)), dtype=torch.uint8).clone()
                 for p in states[info.rank].split(",")]
        torch.set_rng_state(parts[0])
        if len(parts) > 1 and torch.cuda.is_available():
            torch.cuda.set_rng_state(parts[1])
        return ""
    torch.manual_seed(seed * 1_000_003 + step * 1009 + info.rank)
    saved = len(states) if states else "an unknown number of"
    return (f"resuming a run checkpointed by {saved} process(es) on {info.world_size}: the sampler continues "
            f"from the saved step (global batch unchanged); random streams are reseeded, so dropout and "
            "sampling differ from an uninterrupted run")
