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
  before it imports TensorFlow, for isic-train only: it is the one command that runs as
  one task of a job step. isic-launch and isic-bench start their own workers and must see
  every GPU, and in the batch script's shell (not a job step) nothing is narrowed.

Standard library only: the launcher never imports TensorFlow.
"""

import dataclasses
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
            raise UserError(
                f"SLURM_STEP_TASKS_PER_NODE={text!r} is not SLURM's task count list (e.g. "
                "'2(x3),1'); start isic-train with srun, which sets it, and do not set it yourself"
            )
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


@dataclasses.dataclass(frozen=True)
class SlurmTask:
    """This process as one task of a SLURM job step that srun started with several tasks."""

    rank: int  # SLURM_PROCID: the worker index
    tasks: int  # SLURM_STEP_NUM_TASKS: the workers of the step
    local_rank: int  # SLURM_LOCALID: the task's index on its node
    tasks_on_node: int  # SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID


# What srun sets in each task's environment and the batch script's shell lacks (srun(1) and
# sbatch(1), OUTPUT ENVIRONMENT VARIABLES): the shell has SLURM_PROCID=0, SLURM_NTASKS and
# SLURM_TASKS_PER_NODE of the whole allocation, but no SLURM_STEP_* variable.
_STEP_VARIABLES = (
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_STEP_NODELIST",
)


def slurm_step_task(env: dict) -> SlurmTask | None:
    """This process's place in a SLURM job step of several tasks; None: not such a task.

    None outside SLURM, in the batch script's own shell (sbatch runs it as task 0 of the
    allocation, with SLURM_PROCID and SLURM_NTASKS but without SLURM_STEP_ID: it is not a
    job step, so a plain `isic-train` there is one process over all the GPUs it sees), in a
    one-task step (`srun -n 1`), and when TF_CONFIG is set (a worker that isic-launch
    started inside a step belongs to isic-launch's cluster, not SLURM's). Both the GPU
    narrowing below and distribute.slurm_resolver decide from this one function, so a
    process is either a SLURM worker for both or for neither.
    """
    if env.get("TF_CONFIG") or not ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        return None
    tasks = _slurm_int(env, "SLURM_STEP_NUM_TASKS", "1")
    if tasks <= 1:
        return None
    missing = [name for name in _STEP_VARIABLES if name not in env]
    if missing:
        raise UserError(
            f"SLURM_STEP_NUM_TASKS={tasks} but {', '.join(missing)} not set: start isic-train "
            "with srun (which sets them all), not with variables copied from another shell"
        )
    counts = expand_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
    node = _slurm_int(env, "SLURM_NODEID")
    if node >= len(counts):
        raise UserError(
            f"SLURM_NODEID={node} but SLURM_STEP_TASKS_PER_NODE={env['SLURM_STEP_TASKS_PER_NODE']} "
            f"lists {len(counts)} node(s): start isic-train with srun, which sets both"
        )
    task = SlurmTask(
        rank=_slurm_int(env, "SLURM_PROCID"),
        tasks=tasks,
        local_rank=_slurm_int(env, "SLURM_LOCALID"),
        tasks_on_node=counts[node],
    )
    if task.local_rank >= task.tasks_on_node:  # it would get no GPU at all
        raise UserError(
            f"SLURM_LOCALID={task.local_rank} but SLURM_STEP_TASKS_PER_NODE gives node {node} "
            f"{task.tasks_on_node} task(s): start isic-train with srun, which sets both"
        )
    return task


def _slurm_int(env: dict, name: str, default: str | None = None) -> int:
    value = env.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{name}={value!r} is not a whole number: start isic-train with srun, which sets it"
        ) from None


def slurm_task_gpus(env: dict, gpus: list[str]) -> str | None:
    """CUDA_VISIBLE_DEVICES of this SLURM task when several tasks of its step share the
    node's `gpus` (the GPUs this process sees); None: keep what it sees.

    Kept as they are: not a task of a multi-task step (`slurm_step_task`), no GPUs, alone on
    its node, or GPUs SLURM already bound to this task: with `srun --gpus-per-task`
    (SLURM_GPUS_PER_TASK), or with `--gpu-bind` or per-task device cgroups, where the task
    sees fewer GPUs than SLURM_STEP_GPUS (the step's GPUs on this node) or, where SLURM does
    not set that, fewer GPUs than there are tasks on the node (no even share of them
    exists, so they are its own). Otherwise task L of T on the node keeps the L-th T-th of
    them (len(gpus) // T each; the remainder stays idle, as with isic-launch).
    """
    task = slurm_step_task(env)
    if task is None or not gpus or task.tasks_on_node <= 1 or env.get("SLURM_GPUS_PER_TASK"):
        return None
    step_gpus = [e.strip() for e in env.get("SLURM_STEP_GPUS", "").split(",") if e.strip()]
    if len(gpus) < (len(step_gpus) or task.tasks_on_node):
        return None
    if len(gpus) < task.tasks_on_node:
        raise UserError(
            f"{task.tasks_on_node} SLURM tasks on this node share its {len(gpus)} GPU(s) "
            f"(SLURM_STEP_GPUS={','.join(step_gpus)}): start at most {len(gpus)} per node "
            f"(srun --ntasks-per-node={len(gpus)}) or give each its own (srun --gpus-per-task=1)"
        )
    share = len(gpus) // task.tasks_on_node
    return ",".join(gpus[task.local_rank * share : (task.local_rank + 1) * share])


def select_slurm_task_gpus(env=os.environ) -> str | None:
    """Sets this SLURM task's CUDA_VISIBLE_DEVICES (see `slurm_task_gpus`) and memory growth;
    returns the value set (None: unchanged). Call before anything lists TF's devices, and
    only in a command that runs as one task of a job step (isic-train): isic-launch,
    isic-bench and the one-process commands use every GPU they see."""
    if slurm_step_task(env) is None:
        return None  # not a task of a multi-task step: no nvidia-smi call
    mine = slurm_task_gpus(env, node_gpus(env))
    if mine is not None:
        env[VISIBLE] = mine
        env.setdefault(GROWTH, "true")
    return mine
