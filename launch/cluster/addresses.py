"""Where the workers of a local group listen, and what each is told: free ports, TF_CONFIG,
its environment (its own GPUs, no enclosing SLURM task identity, unbuffered output).

Standard library only: the launcher never imports TensorFlow.
"""

import itertools
import json
import socket

from core.errors import UserError
from launch.cluster import gpus as gpus_lib

LOCALHOST = "127.0.0.1"


class LaunchError(UserError):
    """The group cannot start: no free ports, or a worker command that cannot be run."""


def find_free_ports(n: int, start: int | None = None, exclude=()) -> list[int]:
    """Returns `n` distinct free TCP ports (bindable on all interfaces), none in `exclude`.

    With `start`, the first free ports from `start` upwards; without, ports picked by the
    kernel. A port is "free" if it can be bound now; a worker binds it a moment later, so
    another program could take it in between (the worker then fails and, with restarts,
    the group is relaunched on other ports).
    """
    exclude = set(exclude)
    ports, held = [], []
    try:
        # Port 0 asks the kernel for an unused port, as often as needed.
        candidates = range(start, 65536) if start is not None else itertools.repeat(0)
        for port in candidates:
            if len(ports) == n:
                break
            sock = socket.socket()
            try:
                # All interfaces: the workers' gRPC servers listen on 0.0.0.0:port.
                sock.bind(("0.0.0.0", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)  # kept bound until all are found, so the kernel repeats none
            chosen = sock.getsockname()[1]
            if chosen not in exclude:
                ports.append(chosen)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < n:
        raise LaunchError(
            f"only {len(ports)} free ports from {start} upwards, "
            f"{n} needed; pass a lower --port or omit it to let the kernel pick"
        )
    return ports


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` of a cluster of `addresses` (host:port)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def worker_env(base: dict, addresses: list[str], index: int, gpus: str | None = None) -> dict:
    """The environment of worker `index`: `base` plus its TF_CONFIG, minus SLURM_PROCID.

    `gpus` (from `launch.cluster.gpus.assign`) becomes its CUDA_VISIBLE_DEVICES, with GPU
    memory growth on unless `base` chose otherwise; None leaves both as in `base`. Output
    is unbuffered so that lines reach the launcher as they are printed.
    """
    env = dict(base)
    env["TF_CONFIG"] = tf_config(addresses, index)
    # TF_CONFIG already makes a worker ignore an enclosing SLURM step (gpus.slurm_step_task);
    # without SLURM_PROCID, TensorFlow's own SLURM code cannot take it for task 0 either.
    env.pop("SLURM_PROCID", None)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus is not None:
        env[gpus_lib.VISIBLE] = gpus
        env.setdefault(gpus_lib.GROWTH, "true")
    return env
