"""Choosing the device setup of a run: logical CPU devices, precision, strategy, chief.

Everything here touches devices or process-global state, so it is only ever called from
the top of a training or benchmark run, never at import time. The names it accepts
(precisions, strategies) are validated by `launch.training.config.TrainConfig`.
"""

import contextlib
import os

import keras
import tensorflow as tf
from absl import logging

# TensorFlow exports enable_op_determinism only; its inverse lives next to it.
from tensorflow.python.framework import config as tf_framework_config

from core.errors import UserError
from launch.cluster.gpus import slurm_step_task
from launch.training.config import STRATEGIES
from launch.training.config import TrainConfig


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices (for testing mirrored runs).

    Must run before TensorFlow initialises its devices; raises RuntimeError otherwise. It
    cannot be undone: the process keeps the logical devices until it exits, which is why
    it does nothing for `num_devices` <= 1.
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} devices: TensorFlow already initialised "
            "its devices in this process; call split_cpu before any other TF work"
        ) from e


# CPU flags (/proc/cpuinfo) of native bfloat16 arithmetic that oneDNN uses.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Whether `auto` picks mixed_bfloat16 on such CPUs: yes since issue 28's rule passed (the
# U-Net recipe, 3 seeds in each precision, validation Dice within float32's seed spread,
# 1.28-1.32x faster on the AVX-512 BF16 kind; docs/performance.md, "bfloat16 as the CPU
# default"). The Lite0 recipe's flag file keeps float32 (slower in bf16 on the AMX kind).
CPU_BF16_VALIDATED = True


def this_cpu_flags() -> set[str]:
    """This machine's CPU feature flags (/proc/cpuinfo; empty where there is none)."""
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    with open("/proc/cpuinfo") as f:
        return cpu_flags(f.read())


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (empty if none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def choose_precision(
    gpu_capabilities: list[tuple[int, int]],
    cpu_flag_set: set[str],
    cpu_bf16_validated: bool = CPU_BF16_VALIDATED,
) -> tuple[str, str]:
    """(precision, why) that `--precision auto` picks; pure, so tests give any machine.

    GPUs (the lowest compute capability decides): >= 8.0 (Ampere and later) mixed_bfloat16,
    whose float32 exponent range needs no loss scaling and whose tensor cores run as fast
    as float16's; 7.x (Volta, Turing) mixed_float16 with dynamic loss scaling (they have no
    bf16 tensor cores); below 7.0 float32 (no tensor cores: half precision gains little).
    CPUs: float32, or mixed_bfloat16 on a CPU with native bf16 (CPU_BF16_FLAGS) once
    `cpu_bf16_validated`.
    """
    if gpu_capabilities:
        lowest = min(tuple(c) for c in gpu_capabilities)
        where = f"GPU compute capability {lowest[0]}.{lowest[1]}"
        if lowest >= (8, 0):
            return "mixed_bfloat16", f"{where} >= 8.0 (bf16 tensor cores, no loss scaling)"
        if lowest >= (7, 0):
            return "mixed_float16", f"{where} is 7.x (float16 tensor cores, dynamic loss scaling)"
        return "float32", f"{where} < 7.0 (no tensor cores)"
    native = sorted(cpu_flag_set.intersection(CPU_BF16_FLAGS))
    if not native:
        return "float32", "CPU without native bfloat16 (no avx512_bf16 or amx_bf16 flag)"
    if cpu_bf16_validated:
        return "mixed_bfloat16", f"CPU with native bfloat16 ({', '.join(native)})"
    return "float32", (
        f"CPU with native bfloat16 ({', '.join(native)}), but its validation "
        "quality over several seeds is not yet measured (docs/performance.md); "
        "--precision mixed_bfloat16 opts in"
    )


class _SlurmResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
    """TF's SlurmClusterResolver for tasks whose GPUs were chosen before TF started.

    `launch.cli` already gave this task its own GPUs (launch/cluster/gpus.py). TF's
    resolver would set CUDA_VISIBLE_DEVICES again in cluster_spec(), after TF listed the
    devices (slurm_cluster_resolver.py:350-351), count GPUs with nvidia-smi or by splitting
    CUDA_VISIBLE_DEVICES ("" counts as one GPU, :143) and needs a non-zero GPUs-per-task
    to lay out its cluster (range step, :322-323). So: its own GPU bookkeeping is turned
    off, and num_accelerators reports the GPUs this process really sees, which is the
    number of devices MultiWorkerMirroredStrategy mirrors over
    (collective_all_reduce_strategy.py:412).
    """

    def __init__(self, tasks: int, local_gpus: int, port_base: int):
        # gpus_per_node = the step's task count (SLURM_STEP_NUM_TASKS), >= the tasks of any node.
        super().__init__(port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
        self._local_gpus = local_gpus

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
        del task_type, task_id, config_proto
        return {"GPU": self._local_gpus}


def slurm_resolver():
    """A SLURM cluster resolver when this process is one task of a job step that srun
    started with several tasks; None otherwise.

    `launch.cluster.gpus.slurm_step_task` decides, from the variables srun sets for each
    task: the batch script's own shell also has SLURM_PROCID and SLURM_NTASKS > 1 but is
    not a job step, and a plain `isic-train` there is one process, not worker 0 of a
    cluster that never forms. The same function decides whether launch.cli narrowed this
    task's GPUs.
    """
    task = slurm_step_task(os.environ)
    if task is None:
        return None
    local_gpus = len(tf.config.list_physical_devices("GPU"))
    try:
        return _SlurmResolver(task.tasks, local_gpus, port_base=slurm_port_base(os.environ))
    except RuntimeError as e:  # TF's resolver: step variables that do not add up
        raise UserError(
            f"SLURM's step variables disagree ({e}; SLURM_STEP_NUM_TASKS={task.tasks}, "
            f"SLURM_STEP_TASKS_PER_NODE={os.environ['SLURM_STEP_TASKS_PER_NODE']}, "
            f"SLURM_STEP_NODELIST={os.environ['SLURM_STEP_NODELIST']}): start isic-train with srun"
        ) from None


def slurm_port_base(env: dict) -> int:
    """ISIC_SLURM_PORT_BASE (default 8888): the port of each node's first worker."""
    value = env.get("ISIC_SLURM_PORT_BASE", "8888")
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise UserError(
            f"ISIC_SLURM_PORT_BASE={value!r} is not a port number (1..65535); set it as "
            "launch/examples/slurm_train.sbatch does: "
            "export ISIC_SLURM_PORT_BASE=$((20000 + SLURM_JOB_ID % 20000))"
        )
    return int(value)


def communication_options(collective_timeout: float, has_gpus: bool):
    """The all-reduce of a multi-worker job: NCCL when this worker has GPUs, else TF's choice
    (the gRPC ring: NCCL has no CPU kernels); a timeout only when asked for (> 0 seconds).

    AUTO would also pick the ring on GPUs (collective_all_reduce_strategy.py:249 defaults to
    AUTO and only NCCL sets collective_nccl, :880-885); TensorFlow's multi-worker guide asks
    for NCCL on GPUs. Every worker of a job must pick the same: they run the same image on
    the same kind of machine, so each deciding from its own devices agrees.
    """
    implementation = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout or None,
        implementation=implementation.NCCL if has_gpus else implementation.AUTO,
    )


def make_strategy(name: str, collective_timeout: float = 0.0) -> tf.distribute.Strategy:
    """Creates the distribution strategy; `collective_timeout` in seconds (multi_worker,
    debugging only; 0: none).

    'auto' picks multi_worker when TF_CONFIG (or a multi-task SLURM step) describes a
    cluster, mirrored when this machine has several GPUs (or logical CPUs), else one_device.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
    slurm = slurm_resolver()
    if name == "auto":
        if os.environ.get("TF_CONFIG") or slurm is not None:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1 or len(tf.config.list_logical_devices("CPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG") and slurm is None:
            raise UserError(
                "--strategy multi_worker needs a cluster: TF_CONFIG is not set and this process is not "
                "one task of a multi-task SLURM step; start the workers with isic-launch, srun or your "
                "cluster operator (TFJob), or use --strategy auto for one process"
            )
        options = communication_options(
            collective_timeout, has_gpus=bool(tf.config.list_physical_devices("GPU"))
        )
        # An explicit TF_CONFIG wins: SLURM variables also leak into local processes
        # started from inside an allocation (e.g. isic-launch in an sbatch shell).
        resolver = (
            tf.distribute.cluster_resolver.TFConfigClusterResolver() if os.environ.get("TF_CONFIG") else slurm
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
        cpus = len(tf.config.list_logical_devices("CPU"))
        if cpus > 1 and not tf.config.list_physical_devices("GPU"):
            logging.warning(
                "MultiWorkerMirroredStrategy mirrors over ONE CPU device per worker "
                "(tensorflow/python/distribute/collective_all_reduce_strategy.py:421-423): "
                "the %d logical CPU devices of --num_cpu_devices are not replicas",
                cpus,
            )
    elif name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        # Gradients of CPU replicas are summed on the host; NCCL only exists for GPUs.
        ops = None if gpus else tf.distribute.ReductionToOneDevice()
        strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)
    else:
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    logging.info("strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that writes checkpoints, logs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def process_settings(config: TrainConfig):
    """The process-wide settings of a run (devices, determinism, seeds); the Keras dtype
    policy is set inside the block by `set_precision` once the group has agreed on it
    (launch/training/agreement.py: workers must not resolve --precision auto alone).

    Op determinism and the Keras dtype policy are restored when the block ends. Two
    settings outlive it: logical CPU devices (`split_cpu` cannot be undone; only made when
    `--num_cpu_devices` > 1) and the global seeds of Python, NumPy and TensorFlow
    (`keras.utils.set_random_seed`, as any seeded Keras program sets them).
    """
    split_cpu(config.num_cpu_devices)
    was_deterministic = tf_framework_config.is_op_determinism_enabled()
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)  # weight init; data randomness is seeded apart
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if not was_deterministic:
            tf_framework_config.disable_op_determinism()


def set_precision(precision: str, why: str) -> None:
    """Sets the Keras dtype policy of the run (inside `process_settings`) and says why."""
    logging.info("precision %s (%s)", precision, why)
    keras.mixed_precision.set_global_policy(precision)


def task_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's place among chief + workers (0: the chief), as TF_CONFIG lists them."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 0
    chiefs = len(resolver.cluster_spec().as_dict().get("chief", []))
    return resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id


def all_reduce_name(strategy: tf.distribute.Strategy) -> str:
    """The all-reduce implementation a MultiWorkerMirroredStrategy was created with: 'NCCL',
    or 'AUTO (gRPC ring)' (TensorFlow's choice without GPUs; collective_all_reduce_strategy.py
    keeps it in _communication_options, lines 379 and 504)."""
    options = getattr(strategy.extended, "_communication_options", None)
    implementation = getattr(options, "implementation", None)
    if implementation is None:
        return type(strategy).__name__
    name = implementation.name
    return "AUTO (gRPC ring)" if name == "AUTO" else name


def distribute_datasets(strategy: tf.distribute.Strategy, dataset_fn):
    """Distributes the per-input-pipeline dataset `dataset_fn(input_context)` over replicas.

    One CPU replica gets the plain dataset: there is nothing to split or copy to a device,
    and the distributed iterator's per-step machinery would be pure overhead
    (docs/performance.md).
    """
    if (
        isinstance(strategy, tf.distribute.OneDeviceStrategy)
        and "CPU" in strategy.extended.worker_devices[0].upper()
    ):
        return dataset_fn(tf.distribute.InputContext())
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


def mean_over_workers(strategy: tf.distribute.Strategy, value: float) -> float:
    """The mean of every worker's `value`, the same on every worker (one all-reduce of one
    number; every worker must call it at the same point). One process: `value` itself."""
    if num_workers(strategy) == 1:
        return value
    # Every worker has as many replicas, so the mean over replicas is the mean over workers.
    per_replica = strategy.run(lambda: tf.constant(value, tf.float32))
    return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None))


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Number of worker processes (= input pipelines) of the strategy's cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, [])) for job in ("chief", "worker"))
