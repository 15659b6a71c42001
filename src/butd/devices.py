"""The one device resolver: ``--device auto|cpu|cuda[:N]`` (and configs' ``device``) -> a torch device name.

"auto" means a GPU when one is visible, else the CPU. Where the question is not this process's GPUs but
a Ray cluster's, the caller says whether GPUs are there (``cuda_available``).
"""

from __future__ import annotations

from butd.errors import UserError

__all__ = ["resolve_device"]

_KINDS = ("cpu", "cuda", "mps")


def resolve_device(name: str | None = "auto", *, cuda_available: bool | None = None) -> str:
    """"auto" -> "cuda" when a GPU is visible (``cuda_available``, default: torch's answer), else "cpu";
    a named device is checked (a CUDA device asked for where none is visible stops with one line)."""
    name = str(name or "auto")
    if cuda_available is None and (name == "auto" or name.startswith("cuda")):
        import torch

        cuda_available = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if cuda_available else "cpu"
    if name.split(":")[0] not in _KINDS:
        raise UserError("unknown device", name, "pass --device auto, cpu or cuda", usage=True)
    if name.startswith("cuda") and not cuda_available:
        raise UserError("no CUDA device is visible", name, "pass --device cpu (or auto)", usage=True)
    return name
