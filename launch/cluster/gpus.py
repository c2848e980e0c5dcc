"""Which GPUs each process of a job sees: CUDA_VISIBLE_DEVICES, set before TensorFlow starts.

TensorFlow takes every GPU it can see when it first lists its devices, and by default
reserves nearly all of each one's memory. Two local workers that both see every GPU
therefore fight over the same memory (and the second one fails or crawls). So:

* `isic-launch` gives worker i its own disjoint slice of the GPUs it may use (all of the
  machine's, or those of its own CUDA_VISIBLE_DEVICES) and turns on memory growth
  (TF_FORCE_GPU_ALLOW_GROWTH), so a worker holds only the memory it uses;
* a SLURM job step with several tasks on one node that all see the node's GPUs: each task
  keeps the slice of its SLURM_LOCALID. This must happen before TensorFlow lists its
  devices; TensorFlow's SlurmClusterResolver sets CUDA_VISIBLE_DEVICES only when its
  cluster_spec() runs (slurm_cluster_resolver.py:350-351), i.e. after the trainer listed
  them, when it no longer has any effect. `launch.cli` calls `select_slurm_task_gpus`
  before it imports TensorFlow.

Standard library only: the launcher never imports TensorFlow.
"""

import os
import re
import subprocess

from core.errors import UserError

VISIBLE = "CUDA_VISIBLE_DEVICES"
GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"


def node_gpus(env: dict) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs).

    CUDA_VISIBLE_DEVICES's own list when it is set ("" or "-1": none); otherwise the GPUs
    `nvidia-smi` lists (none when it is missing or fails: a machine without NVIDIA GPUs).
    """
    if VISIBLE in env:
        entries = [e.strip() for e in env[VISIBLE].split(",") if e.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to say "none".
        return [] if not entries or entries[0] == "-1" else entries
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def assign(num_workers: int, gpus: list[str], gpus_per_worker: int = 0) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES of each of `num_workers` workers that share `gpus`.

    Worker i gets gpus[i*G:(i+1)*G], G = `gpus_per_worker` or, when 0, an even share
    (len(gpus) // num_workers; the remainder stays idle). None when there are no GPUs
    (CPU workers: the environment is left as it is). Raises UserError when the GPUs do
    not go round: two workers on one GPU would both reserve its memory.
    """
    if not gpus:
        if gpus_per_worker:
            raise UserError(
                f"--gpus_per_worker {gpus_per_worker}: this machine has no "
                f"visible GPU (nvidia-smi lists none, or {VISIBLE} hides them)"
            )
        return None
    share = gpus_per_worker or len(gpus) // num_workers
    if share == 0 or share * num_workers > len(gpus):
        raise UserError(
            f"{num_workers} workers with {share or 1} GPU(s) each need "
            f"{(share or 1) * num_workers} GPUs; this machine's visible GPUs are "
            f"{','.join(gpus)}. Use --num_workers {len(gpus) // (share or 1) or 1} or fewer "
            f"(one machine needs no launcher: isic-train mirrors over all its GPUs)"
        )
    return [",".join(gpus[i * share : (i + 1) * share]) for i in range(num_workers)]


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed task counts, "2(x3),1" -> [2, 2, 2, 1]."""
    counts = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise ValueError(f"cannot read SLURM tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slurm_task_gpus(env: dict, gpus: list[str]) -> str | None:
    """CUDA_VISIBLE_DEVICES of this SLURM task, when several tasks of a multi-task step share
    a node whose `gpus` they all see; None: nothing to change.

    Nothing changes outside a multi-task step, with one task on this node, without GPUs,
    or when SLURM already binds GPUs per task (--gpus-per-task sets SLURM_GPUS_PER_TASK).
    """
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return None
    if env.get("SLURM_GPUS_PER_TASK") or not gpus:
        return None
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not per_node or "SLURM_LOCALID" not in env:
        return None
    counts = expand_tasks_per_node(per_node)
    node = int(env.get("SLURM_NODEID", "0"))
    tasks_here = counts[node] if node < len(counts) else counts[-1]
    if tasks_here <= 1:
        return None
    return assign(tasks_here, gpus)[int(env["SLURM_LOCALID"])]


def select_slurm_task_gpus(env=os.environ) -> str | None:
    """Sets this SLURM task's CUDA_VISIBLE_DEVICES (see `slurm_task_gpus`) and memory growth;
    returns the value set (None: unchanged). Call before anything lists TF's devices."""
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return None  # not a multi-task step: no nvidia-smi call
    mine = slurm_task_gpus(env, node_gpus(env))
    if mine is not None:
        env[VISIBLE] = mine
        env.setdefault(GROWTH, "true")
    return mine
