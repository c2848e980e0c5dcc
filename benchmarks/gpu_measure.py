"""One setup of the GPU check (benchmarks/gpu.py), measured in its own process: the U-Net that
isic-train builds (launch/training/build.py), its own train steps, on in-memory batches.

What it reports beyond speed is what a long job needs to be true on every replica and every
worker: the loss scale of each replica (they must stay equal: one skip decision for all,
launch/training/steps.py), the skipped steps, whether every weight is finite, and the
all-reduce TensorFlow really ran, read from its own log line ("Collective all_reduce
tensors: ... implementation = NCCL", tensorflow/python/distribute/cross_device_ops.py:1154).
It runs under the stall watchdog (core/watchdog.py): a setup that hangs (NCCL waiting on a
peer, a compile that never ends) is ended and named with the phase it hung in.
"""

import dataclasses
import logging
import re
import time

from benchmarks import timers
from benchmarks import training
from core import watchdog

# A phase of the check (set-up, warm-up with tracing and XLA compiles, the timed steps) that
# makes no progress this long has hung.
STALL_MINUTES = 10.0
_ALL_REDUCE_LOG = re.compile(r"Collective all_reduce tensors: .*implementation = (?:\w+\.)?(\w+)")


@dataclasses.dataclass(frozen=True)
class GpuRun:
    """One setup, measured in its own process(es)."""

    devices: int  # replicas of this process (GPUs, or CPUs when tested without a GPU)
    processes: int
    precision: str
    all_reduce: str  # what TensorFlow logged it ran ("-" with one device; else what was asked)
    images_per_s: float  # all processes together
    timed_steps: int
    loss_scale_skips: int  # timed and warm-up steps whose update was skipped (float16)
    peak_memory_mb: float | None  # the largest peak of one device (None on CPUs)
    finite: bool  # every weight is finite after the run
    weights_sha256: str
    xla: bool = False  # each replica's step compiled by XLA (--jit_compile)
    loss_scales: tuple[float, ...] = ()  # each local replica's loss scale (float16 only)
    device_type: str = "GPU"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one setup trains: model width, images, steps (tests make it tiny)."""

    base_filters: int = 64
    image_size: int = 128  # the ISIC recipes' size (launch/configs/isic2018_full_gpu.flags)
    per_device_batch: int = 32
    warmup_steps: int = 10  # tracing, autotuning, the first loss-scale adjustments
    timed_steps: int = 100


class _AllReduceLog(logging.Handler):
    """Remembers the implementation of TensorFlow's all-reduce log lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen: set[str] = set()

    def emit(self, record):
        match = _ALL_REDUCE_LOG.search(record.getMessage())
        if match:
            self.seen.add(match.group(1))


def measure(
    devices: int,
    device_type: str = "GPU",
    multi_worker: bool = False,
    jit_compile: str = "auto",
    precision: str = "auto",
    stall_minutes: float = STALL_MINUTES,
    **sizes,
) -> GpuRun:
    """Trains `devices` local devices (all of them when 0) as isic-train would and measures
    it (module doc). `device_type` "CPU" is for tests. With `multi_worker`, this process is
    one worker of TF_CONFIG's cluster and reports the whole cluster's images/s."""
    size = Sizes(**sizes)
    label = f"gpu-check {devices or 'all'} {device_type}, {precision}" + (", worker" if multi_worker else "")
    with watchdog.Watchdog(60 * stall_minutes, name=label, option="its stall bound") as dog:
        dog.progress("set-up", doing="creating the strategy and building the model")
        strategy, names, asked, precision = _strategy(devices, device_type, multi_worker, precision)
        tf_log = logging.getLogger("tensorflow")
        seen = _AllReduceLog()
        tf_log.addHandler(seen)
        level = tf_log.level
        tf_log.setLevel(min(level or logging.INFO, logging.INFO))
        try:
            run = _train(strategy, names, device_type, precision, jit_compile, size, dog)
        finally:
            tf_log.removeHandler(seen)
            tf_log.setLevel(level)
    used = "/".join(sorted(seen.seen)) or asked
    return dataclasses.replace(run, all_reduce=used if strategy.num_replicas_in_sync > 1 else "-")


def _strategy(devices: int, device_type: str, multi_worker: bool, precision: str):
    """(strategy, local device names, the all-reduce asked for, the precision) of a setup."""
    import tensorflow as tf

    from launch.training import agreement
    from launch.training import distribute

    if multi_worker:  # before anything initialises TF's devices (as in isic-train)
        options = distribute.communication_options(0.0, has_gpus=device_type == "GPU")
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        asked = options.implementation.name
    names = [d.name for d in tf.config.list_logical_devices(device_type)][: devices or None]
    if not multi_worker and len(names) > 1:
        strategy, asked = tf.distribute.MirroredStrategy(names), "TensorFlow's default"
    elif not multi_worker:
        strategy, asked = tf.distribute.OneDeviceStrategy(names[0]), "-"
    # As isic-train decides it (one process: its own devices), once the strategy exists.
    precision, why = agreement.group_precision(precision, [agreement.device_facts()])
    distribute.set_precision(precision, why)
    return strategy, names, asked, precision


def _train(strategy, names, device_type: str, precision: str, jit_compile: str, size: Sizes, dog) -> GpuRun:
    """Warm-up and timed steps of the builder's model on constant batches; the GpuRun."""
    import keras
    import numpy as np
    import tensorflow as tf

    from launch.training import build
    from launch.training import distribute
    from launch.training import trainer

    workers = distribute.num_workers(strategy)
    global_batch = size.per_device_batch * strategy.num_replicas_in_sync
    config = dataclasses.replace(
        training.RECIPE, batch_size=global_batch, base_filters=size.base_filters, jit_compile=jit_compile
    )
    model, optimizer = build.model_and_optimizer(strategy, config, size.image_size, 100, precision)
    made = build.make_steps(strategy, model, optimizer, config)
    data = lambda ctx: timers.constant_dataset(size.per_device_batch, size.image_size)
    iterator = iter(distribute.distribute_datasets(strategy, data))
    dog.progress("warm-up", doing=f"{size.warmup_steps} steps: tracing, compiling, the first loss scales")
    made.train(iterator, size.warmup_steps)
    gpus = [n for n in names if device_type == "GPU"]
    for name in gpus:
        tf.config.experimental.reset_memory_stats(name)
    dog.progress("timed steps", size.warmup_steps, f"{size.timed_steps} steps")
    start = time.perf_counter()
    made.train(iterator, size.timed_steps)  # returns after fetching the sums: the steps are done
    seconds = time.perf_counter() - start
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # One value per local replica: they must stay equal (one decision for all replicas).
    scale = getattr(optimizer.dynamic_scale, "value", None) if scaled else None  # the tf.Variable
    scales = strategy.experimental_local_results(scale) if scaled else ()
    return GpuRun(
        devices=strategy.num_replicas_in_sync // workers,
        processes=workers,
        precision=precision,
        all_reduce="-",
        images_per_s=size.timed_steps * global_batch / seconds,
        timed_steps=size.timed_steps,
        # Skipped updates do not count as optimizer iterations (steps._loss_scaled_step).
        loss_scale_skips=size.warmup_steps + size.timed_steps - int(optimizer.iterations.numpy()),
        peak_memory_mb=max(tf.config.experimental.get_memory_info(n)["peak"] for n in gpus) / 2**20
        if gpus
        else None,
        finite=all(bool(np.isfinite(w.numpy()).all()) for w in model.weights),
        weights_sha256=trainer.weights_digest(model),
        xla=made.jit_compile,
        loss_scales=tuple(float(s.numpy()) for s in scales),
        device_type=device_type,
    )
