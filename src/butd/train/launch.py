"""``butd train --nproc N``: N local training processes through torch's elastic launcher, on 127.0.0.1 only.

On a cluster, use ``torchrun`` itself (see TRAINING.md); the trainers read the same environment variables.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Sequence

import torch.distributed as dist

__all__ = ["launch_local"]


def _loopback_name() -> str:
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"


def launch_local(nproc: int, argv: Sequence[str], module: str | None = "butd") -> int:
    """Run ``python -m MODULE ARGV`` (``python ARGV`` when ``module`` is None) in ``nproc`` workers on this
    machine through torch's elastic launcher (``torch.distributed.run``), everything bound to 127.0.0.1.
    Returns the exit status (0 = all ranks ok).

    The rendezvous store listens on a socket this function binds to 127.0.0.1 (torchrun's own store would
    listen on every interface); gloo and NCCL are pointed at the loopback interface unless the user set them.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1 (got {nproc})")
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE") or 1) > 1:
        raise ValueError("--nproc given inside a torchrun worker: let torchrun start the processes instead")
    from torch.distributed import run as elastic
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    fd = sock.detach()  # the store owns (and closes) the listening socket from here on
    # multi_tenant: the launcher's own rendezvous store (same process, same port) reuses this server
    store = dist.TCPStore("127.0.0.1", port, None, True, datetime.timedelta(seconds=300),
                          wait_for_workers=False, multi_tenant=True, master_listen_fd=fd)
    lo = _loopback_name()
    saved = {k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    for key in saved:
        os.environ.setdefault(key, lo)
    try:
        elastic.main(["--nnodes=1", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
                      f"--master-port={port}", "--max-restarts=0", *(["--module", module] if module else []),
                      *argv])
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        print(f"Error: worker rank {rank} of {nproc} failed (exit code {failure.exitcode}): see its message "
              "above; fix it and rerun (add --resume to continue from the last checkpoint)", file=sys.stderr)
        return 1
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        del store
    return 0
