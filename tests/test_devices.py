"""Device setup without GPUs: the all-reduce and timeout of multi-worker jobs, the stop
flag's placement, and which GPUs each worker or SLURM task sees (mocked device lists)."""

import os

import keras
import pytest
import tensorflow as tf

from core.errors import UserError
from launch.cluster import gpus
from launch.training import distribute
from launch.training import preemption
from launch.training import steps as steps_lib
from model import losses
from tests.test_slurm import SBATCH_SHELL
from tests.test_slurm import srun_task

IMPLEMENTATION = tf.distribute.experimental.CommunicationImplementation


def test_multi_worker_all_reduce_is_nccl_on_gpus_and_has_no_timeout_by_default():
    on_gpus = distribute.communication_options(0.0, has_gpus=True)
    assert on_gpus.implementation == IMPLEMENTATION.NCCL and on_gpus.timeout_seconds is None
    on_cpus = distribute.communication_options(30.0, has_gpus=False)
    assert on_cpus.implementation == IMPLEMENTATION.AUTO and on_cpus.timeout_seconds == 30.0


def _while_condition_nodes(function, *args):
    """NodeDefs of the condition of the one while loop in `function`'s graph."""
    graph = function.get_concrete_function(*args).graph
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(loops) == 1
    return library[loops[0].get_attr("cond").name].node_def


def test_the_stop_flag_and_the_loop_condition_stay_on_the_host():
    # On a GPU machine an unplaced variable and condition would land on GPU:0 and the
    # loop would copy the predicate to the host before every step. On the CPU the placement
    # requested in the graph is what shows it.
    stop = preemption.LocalStop()
    assert stop.flag.device.endswith("CPU:0")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    train_steps = steps_lib.make_train_steps(
        strategy, model, optimizer, 2, losses.training_loss(), stop=stop.flag
    )
    data = tf.data.Dataset.from_tensors((tf.zeros([2, 8, 8, 3]), tf.zeros([2, 8, 8, 1]))).repeat()
    iterator = iter(data)
    assert train_steps(iterator, 2)["count"] == 4.0
    nodes = _while_condition_nodes(train_steps.function, iterator, tf.constant(2))
    computed = [n for n in nodes if n.op in ("ReadVariableOp", "Less", "LogicalNot", "LogicalAnd")]
    assert len(computed) == 4 and all(n.device.upper().endswith("CPU:0") for n in computed), [
        (n.op, n.device) for n in nodes
    ]


def test_local_workers_get_disjoint_gpu_shares():
    eight = [str(i) for i in range(8)]
    assert gpus.assign(2, eight) == ["0,1,2,3", "4,5,6,7"]
    assert gpus.assign(3, eight) == ["0,1", "2,3", "4,5"]  # 6 and 7 idle: an even share
    assert gpus.assign(2, eight, gpus_per_worker=1) == ["0", "1"]
    # The launcher's own CUDA_VISIBLE_DEVICES is split, entries as given (UUIDs too).
    assert gpus.assign(2, ["3", "GPU-5a"]) == ["3", "GPU-5a"]
    assert gpus.assign(2, []) is None  # CPU workers: the environment is left alone
    for workers, visible, per_worker in ((3, ["0", "1"], 0), (2, eight, 5), (2, [], 1)):
        with pytest.raises(UserError, match="GPU"):
            gpus.assign(workers, visible, per_worker)


def test_visible_gpus_come_from_cuda_visible_devices_first():
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_slurm_resolver_leaves_cuda_visible_devices_and_reports_local_gpus(monkeypatch):
    # Task 5 of an srun step of 8 (tests/test_slurm.py), in a process without GPUs.
    for name, value in dict(srun_task(1), CUDA_VISIBLE_DEVICES="").items():
        monkeypatch.setenv(name, value)
    resolver = distribute.slurm_resolver()
    spec = resolver.cluster_spec().as_dict()
    assert len(spec["worker"]) == 8 and spec["worker"][5] == "gpu02:8889"
    assert (resolver.task_type, resolver.task_id) == ("worker", 5)
    assert resolver.num_accelerators() == {"GPU": 0}  # this CPU-only process
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # TF's resolver would have set "0"
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "9")  # one more than SLURM_STEP_TASKS_PER_NODE's 4(x2)
    with pytest.raises(UserError, match="SLURM's step variables disagree .*start isic-train with srun"):
        distribute.slurm_resolver()
    monkeypatch.setenv("ISIC_SLURM_PORT_BASE", "port")
    with pytest.raises(UserError, match="ISIC_SLURM_PORT_BASE='port' is not a port number"):
        distribute.slurm_resolver()


def test_isic_train_in_the_batch_script_shell_is_one_process(monkeypatch):
    # SLURM_PROCID=0 and SLURM_NTASKS=8 there, but no job step: not worker 0 of a cluster.
    for name, value in dict(SBATCH_SHELL, CUDA_VISIBLE_DEVICES="").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.slurm_resolver() is None
    with pytest.raises(UserError, match="--strategy multi_worker needs a cluster: TF_CONFIG is not set"):
        distribute.make_strategy("multi_worker")
