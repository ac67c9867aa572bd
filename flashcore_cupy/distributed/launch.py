"""Start one process per GPU for a distributed script:

  python -m flashcore_cupy.distributed.launch --nproc N [--host H] [--port P] script.py [args ...]

Process r runs `python script.py args` with RANK=r, LOCAL_RANK=r, WORLD_SIZE=N and the
rendezvous address cupyx.distributed.init_process_group reads (CUPYX_DISTRIBUTED_HOST and
CUPYX_DISTRIBUTED_PORT; a free local port by default). The script reads them with
`rank_from_env()`. When a process fails the others are stopped, and the launcher exits with the
first failure's status; else 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def rank_from_env() -> tuple[int, int]:
    """(rank, world size) of this process, as the launcher set them; ValueError when absent."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError) as e:
        raise ValueError("RANK and WORLD_SIZE are not set: start the script with "
                         "python -m flashcore_cupy.distributed.launch --nproc N script.py") from e
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is outside [0, WORLD_SIZE {world})")
    return rank, world


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str], host: str = "127.0.0.1", port: int | None = None) -> int:
    """Run `python argv...` in nproc processes (ranks 0 .. nproc - 1) and wait for them; the
    exit status as the module's docstring says."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    port = _free_port(host) if port is None else port
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   CUPYX_DISTRIBUTED_HOST=host, CUPYX_DISTRIBUTED_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, *argv], env=env))
    status = 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed:
            status = failed[0]
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.05)
    for p in procs:
        p.wait()
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode != 0), 0)
    return status


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flashcore_cupy.distributed.launch",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, required=True, help="processes: one per GPU")
    ap.add_argument("--host", default="127.0.0.1", help="rank 0's host (the rendezvous)")
    ap.add_argument("--port", type=int, default=None, help="rendezvous port (default: a free one)")
    ap.add_argument("script")
    ap.add_argument("script_args", nargs=argparse.REMAINDER)
    ns = ap.parse_args(args)
    return launch(ns.nproc, [ns.script, *ns.script_args], ns.host, ns.port)


if __name__ == "__main__":
    sys.exit(main())
