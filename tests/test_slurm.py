"""Which SLURM processes are workers and which GPUs each keeps, from the real environments.

The environments below are what SLURM sets, written out: the batch script's shell has the
variables of the sbatch(1) man page's OUTPUT ENVIRONMENT VARIABLES section (among them
SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS, SLURM_TASKS_PER_NODE,
SLURM_JOB_GPUS); a task of an `srun` step adds those of the srun(1) man page's section of
the same name (SLURM_STEP_ID, SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST,
SLURM_STEP_TASKS_PER_NODE, the task's own SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID, and
with GPUs SLURM_STEP_GPUS, SLURM_GPUS_PER_TASK under --gpus-per-task, and
CUDA_VISIBLE_DEVICES). The batch shell has SLURM_PROCID=0 and SLURM_NTASKS=8 but no
SLURM_STEP_ID: it is not a job step.
Pure functions only (no TensorFlow); the commands themselves run in tests/test_cluster.py
(isic-launch) and tests/test_cli.py (isic-train).
"""

import pytest

from core.errors import UserError
from launch.cluster import gpus

EIGHT = ",".join(str(i) for i in range(8))

# `sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=8 job.sbatch`: the script's shell on
# the first node.
SBATCH_SHELL = {
    "ENVIRONMENT": "BATCH",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOBID": "4242",
    "SLURM_JOB_NAME": "isic-unet",
    "SLURM_JOB_NODELIST": "gpu[01-02]",
    "SLURM_NODELIST": "gpu[01-02]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NNODES": "2",
    "SLURM_JOB_CPUS_PER_NODE": "64(x2)",
    "SLURM_CPUS_ON_NODE": "64",
    "SLURM_NTASKS": "8",
    "SLURM_NPROCS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_GTIDS": "0",
    "SLURM_TASK_PID": "31337",
    "SLURMD_NODENAME": "gpu01",
    "SLURM_SUBMIT_DIR": "/home/user/isic",
    "SLURM_JOB_PARTITION": "gpu",
    "SLURM_JOB_GPUS": EIGHT,
    "SLURM_GPUS_ON_NODE": "8",
    "SLURM_GPUS_PER_NODE": "8",
    "CUDA_VISIBLE_DEVICES": EIGHT,
}


def srun_task(local_id: int, node: int = 1, **extra) -> dict:
    """Task `local_id` on node `node` of `srun python -m launch.commands.train ...` in that
    script: 4 tasks per node on 2 nodes, every task seeing the node's 8 GPUs unless `extra`
    says how SLURM bound them."""
    rank = node * 4 + local_id
    task = dict(
        SBATCH_SHELL,
        SLURM_STEP_ID="0",
        SLURM_STEPID="0",
        SLURM_STEP_NUM_TASKS="8",
        SLURM_STEP_NUM_NODES="2",
        SLURM_STEP_NODELIST="gpu[01-02]",
        SLURM_STEP_TASKS_PER_NODE="4(x2)",
        SLURM_STEP_LAUNCHER_PORT="41000",
        SLURM_SRUN_COMM_PORT="41000",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(local_id),
        SLURM_NODEID=str(node),
        SLURM_GTIDS=",".join(str(node * 4 + i) for i in range(4)),
        SLURMD_NODENAME=f"gpu0{node + 1}",
        SLURM_STEP_GPUS=EIGHT,
        CUDA_VISIBLE_DEVICES=EIGHT,
    )
    return dict(task, **extra)


def _selected(env: dict) -> tuple[str | None, str]:
    """What select_slurm_task_gpus returns and the CUDA_VISIBLE_DEVICES it leaves."""
    env = dict(env)
    return gpus.select_slurm_task_gpus(env), env["CUDA_VISIBLE_DEVICES"]


def test_the_batch_script_shell_is_not_a_task_of_a_step():
    # A plain `isic-train` (or isic-launch, isic-bench) typed into the script: one process
    # over all 8 GPUs, not worker 0 of 8 that never meet and not narrowed to 2 GPUs.
    assert gpus.slurm_step_task(SBATCH_SHELL) is None
    assert gpus.slurm_task_gpus(SBATCH_SHELL, EIGHT.split(",")) is None
    assert _selected(SBATCH_SHELL) == (None, EIGHT)


def test_an_unbound_srun_task_keeps_its_share_of_the_node_gpus():
    task = gpus.slurm_step_task(srun_task(1))
    assert task == gpus.SlurmTask(rank=5, tasks=8, local_rank=1, tasks_on_node=4)
    shares = [_selected(srun_task(local_id)) for local_id in range(4)]
    assert shares == [("0,1", "0,1"), ("2,3", "2,3"), ("4,5", "4,5"), ("6,7", "6,7")]
    env = srun_task(3)
    gpus.select_slurm_task_gpus(env)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_srun_gpus_per_task_is_kept_as_slurm_bound_it():
    # srun --gpus-per-task=2: SLURM sets SLURM_GPUS_PER_TASK and gives each task its 2 GPUs.
    env = srun_task(1, SLURM_GPUS_PER_TASK="2", CUDA_VISIBLE_DEVICES="2,3")
    assert _selected(env) == (None, "2,3")


def test_a_task_bound_to_its_gpus_without_gpus_per_task_uses_exactly_those():
    # srun --gpu-bind=map_gpu:0,2,4,6: the task sees one of the step's 8 GPUs.
    assert _selected(srun_task(1, CUDA_VISIBLE_DEVICES="2")) == (None, "2")
    # Per-task device cgroups on a SLURM that sets no SLURM_STEP_GPUS: the task sees its one
    # GPU renumbered as 0; with 4 tasks on the node, 1 GPU cannot be a shared view to split.
    cgroup = srun_task(1, CUDA_VISIBLE_DEVICES="0")
    del cgroup["SLURM_STEP_GPUS"]
    assert _selected(cgroup) == (None, "0")


def test_tasks_that_share_fewer_gpus_than_they_are_fail_with_the_fix():
    # 4 tasks on a node whose step has 2 GPUs that all of them see.
    env = srun_task(1, SLURM_STEP_GPUS="0,1", CUDA_VISIBLE_DEVICES="0,1")
    fix = r"--ntasks-per-node=2\) or give each its own \(srun --gpus-per-task=1\)"
    with pytest.raises(UserError, match=fix):
        gpus.select_slurm_task_gpus(env)


def test_one_task_steps_and_launcher_workers_are_not_slurm_workers():
    # `srun -n 1 isic-train` in the script: the step's only task.
    assert gpus.slurm_step_task(srun_task(0, node=0, SLURM_STEP_NUM_TASKS="1")) is None
    # A worker that isic-launch started inside a task: its TF_CONFIG names its cluster.
    assert gpus.slurm_step_task(srun_task(1, TF_CONFIG='{"cluster": {}}')) is None


def test_a_broken_step_environment_is_one_line_naming_the_variable():
    env = srun_task(1)
    del env["SLURM_LOCALID"]
    with pytest.raises(UserError, match="SLURM_STEP_NUM_TASKS=8 but SLURM_LOCALID not set: start"):
        gpus.slurm_step_task(env)
    with pytest.raises(UserError, match="SLURM_STEP_TASKS_PER_NODE='4x2' is not SLURM's task count list"):
        gpus.slurm_step_task(srun_task(1, SLURM_STEP_TASKS_PER_NODE="4x2"))
    with pytest.raises(UserError, match="SLURM_NODEID=1 but SLURM_STEP_TASKS_PER_NODE=8 lists 1 node"):
        gpus.slurm_step_task(srun_task(1, SLURM_STEP_TASKS_PER_NODE="8"))
    with pytest.raises(UserError, match="SLURM_LOCALID=1 but SLURM_STEP_TASKS_PER_NODE gives node 1 1 task"):
        gpus.slurm_step_task(srun_task(1, SLURM_STEP_TASKS_PER_NODE="7,1"))
    assert gpus.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
