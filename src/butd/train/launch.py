"""``butd train --nproc N``: N local training processes through torch's elastic launcher, on 127.0.0.1 only.

On a cluster, use ``torchrun`` itself (see TRAINING.md); the trainers read the same environment variables.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

import torch.distributed as dist

from butd.errors import UserError

__all__ = ["LAUNCHED_ENV", "launch_local"]

LAUNCHED_ENV = "BUTD_NPROC_LAUNCHED"  # set for the ranks of `--nproc`: the launching command checked --out
VERBOSE_ENV = "BUTD_LAUNCH_VERBOSE"  # "1": the launcher shows torchrun's own log lines (`butd train --verbose`)


def _loopback_name() -> str:
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"


def launch_local(nproc: int, argv: Sequence[str], module: str | None = "butd", verbose: bool = False) -> int:
    """Run ``python -m MODULE ARGV`` (``python ARGV`` when ``module`` is None) in ``nproc`` workers on this
    machine through torch's elastic launcher (``torch.distributed.run``), everything bound to 127.0.0.1.
    Returns the exit status (0 = all ranks ok). The launcher's own log lines (its ``OMP_NUM_THREADS``
    banner, restarts, failure tables) are shown only with ``verbose``; the workers' output always is.

    The launcher runs in a child process whose environment points gloo and NCCL at the loopback interface
    (unless the user set ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``); this process's own environment
    is left alone.
    """
    if nproc < 1:
        raise UserError("--nproc must be at least 1", str(nproc), "pass a number of processes", usage=True)
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE") or 1) > 1:
        raise UserError("--nproc given inside a torchrun worker", "--nproc", "let torchrun start the processes",
                        usage=True)
    lo = _loopback_name()
    env = {"GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo, **os.environ, LAUNCHED_ENV: "1",
           VERBOSE_ENV: "1" if verbose else "0"}
    cmd = [sys.executable, "-m", "butd.train.launch", str(nproc), module or "", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def _agent(nproc: int, module: str | None, argv: Sequence[str], verbose: bool = False) -> int:
    """The launcher process: torch's elastic agent with its rendezvous store on 127.0.0.1 only."""
    from torch.distributed import run as elastic
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not verbose:  # this process is only the launcher: its loggers are ours to quieten (after torch set them)
        for name in ("torch.distributed.run", "torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    fd = sock.detach()  # the store owns (and closes) the listening socket from here on
    # torchrun's own store would listen on every interface; with multi_tenant, the agent's store (same
    # process, same port) reuses this server, which listens on the 127.0.0.1 socket above
    store = dist.TCPStore("127.0.0.1", port, None, True, datetime.timedelta(seconds=300),
                          wait_for_workers=False, multi_tenant=True, master_listen_fd=fd)
    try:
        elastic.main(["--nnodes=1", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
                      f"--master-port={port}", "--max-restarts=0", *(["--module", module] if module else []),
                      *argv])
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        print(f"Error: worker rank {rank} of {nproc} failed (exit code {failure.exitcode}): see its message "
              "above; fix it and rerun (add --resume to continue from the last checkpoint)", file=sys.stderr)
        return failure.exitcode if failure.exitcode == 2 else 1  # a usage error stays one
    finally:
        del store
    return 0


if __name__ == "__main__":
    sys.exit(_agent(int(sys.argv[1]), sys.argv[2] or None, sys.argv[3:], os.environ.get(VERBOSE_ENV) == "1"))
