"""`isic-bench --stages gpu` (`make gpu-check`): the check to run on a GPU machine before a
long job. Nothing here has run on a GPU yet: this repository's machines have none.

It trains the full-size U-Net (64 filters, `--precision auto`: mixed float16 on GPUs of
compute capability 7.x, bfloat16 from 8.0), built by isic-train's builder
(launch/training/build.py, with the CPU recipe's optimizer: benchmarks/training.py
RECIPE), on in-memory random batches of PER_GPU_BATCH images of IMAGE_SIZE^2 per GPU,
through the trainer's own train steps, for WARMUP_STEPS and then TIMED_STEPS steps, in
three setups, each in its own process:

  1. one GPU (CUDA_VISIBLE_DEVICES = the first one);
  2. all GPUs of the machine, mirrored (skipped with one GPU);
  3. two worker processes on this machine under isic-launch (MultiWorkerMirroredStrategy,
     each worker its own half of the GPUs; skipped with one GPU).

The one-GPU setup runs twice: with XLA as `--jit_compile auto` picks it (on for GPUs) and
with the other setting, for the XLA on/off row. For each: images/s, loss-scale skips
(steps whose float16 gradients overflowed, so the optimizer skipped them), peak GPU
memory, which all-reduce ran, and whether every weight is finite. Scaling efficiency =
images/s on N GPUs / (N x images/s on one). It fails (exit status 1) on any non-finite
weight, on workers that disagree on the weights, or on an efficiency below the floor
(--gpu_scaling_floor, 0.7). Without a GPU it says so and exits 0.
"""

import dataclasses
import io
import json
import os

from benchmarks import child
from benchmarks import results
from benchmarks.config import GPU_SCALING_FLOOR
from launch.cluster import gpus as gpus_lib

SCALING_FLOOR = GPU_SCALING_FLOOR  # why 0.7: benchmarks/config.py
BASE_FILTERS = 64
IMAGE_SIZE = 128  # the ISIC recipes' size (launch/configs/isic2018_full_gpu.flags)
PER_GPU_BATCH = 32
WARMUP_STEPS = 10  # tracing, autotuning, the first loss-scale adjustments
TIMED_STEPS = 100
CHILD_TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class GpuRun:
    """One setup, measured in its own process(es) (see `measure`)."""

    devices: int  # replicas of this process (GPUs, or CPUs when tested without a GPU)
    processes: int
    precision: str
    all_reduce: str  # the strategy's cross-device all-reduce ("-" with one device)
    images_per_s: float  # all processes together
    timed_steps: int
    loss_scale_skips: int  # timed and warm-up steps whose update was skipped (float16)
    peak_memory_mb: float | None  # the largest peak of one device (None on CPUs)
    finite: bool  # every weight is finite after the run
    weights_sha256: str
    xla: bool = False  # each replica's step compiled by XLA (--jit_compile)


@dataclasses.dataclass(frozen=True)
class GpuCheckReport:
    """Everything the check measured; `judge` decides whether it passes."""

    gpus: list[str]  # as TensorFlow names them
    one: GpuRun | None
    all: GpuRun | None
    two_processes: list[GpuRun] | None  # one per worker
    one_other_xla: GpuRun | None = None  # one GPU with the XLA setting auto does not pick

    @property
    def scaling_efficiency(self) -> float | None:
        if not (self.one and self.all and self.all.devices > 1):
            return None
        return self.all.images_per_s / (self.all.devices * self.one.images_per_s)


def judge(report: GpuCheckReport, floor: float = SCALING_FLOOR) -> list[str]:
    """What fails the check (empty: it passes)."""
    problems = []
    runs = [
        ("1 GPU", report.one),
        ("1 GPU, other XLA setting", report.one_other_xla),
        ("all GPUs", report.all),
    ]
    runs += [(f"2 processes, worker {i}", r) for i, r in enumerate(report.two_processes or [])]
    for name, run in runs:
        if run is not None and not run.finite:
            problems.append(
                f"{name}: non-finite weights after {run.timed_steps} steps "
                f"({run.loss_scale_skips} loss-scale skips)"
            )
    efficiency = report.scaling_efficiency
    if efficiency is not None and efficiency < floor:
        problems.append(
            f"scaling efficiency {efficiency:.2f} on {report.all.devices} GPUs is below the floor {floor:g}"
        )
    if report.two_processes and len({r.weights_sha256 for r in report.two_processes}) != 1:
        problems.append("2 processes: the workers ended with different weights")
    return problems


def rows(report: GpuCheckReport, floor: float = SCALING_FLOOR) -> list[results.Row]:
    """The table: one row per setup, the one-GPU figure as every row's baseline."""
    base = report.one.images_per_s if report.one else None
    efficiency = report.scaling_efficiency
    out = []
    for name, run in (("1 GPU", report.one), ("all GPUs", report.all)):
        if run is None:
            continue
        scaled = run is report.all and efficiency is not None
        out.append(
            results.Row.compare(
                0,
                f"U-Net {BASE_FILTERS} filters, {name} ({run.devices})",
                "img/s",
                run.images_per_s,
                base,
                target=f">= {floor:g} x N x 1 GPU" if scaled else "",
                passed=(efficiency >= floor) if scaled else None,
                detail=_detail(run),
            )
        )
    other = report.one_other_xla
    if other is not None and report.one is not None:
        on, off = (report.one, other) if report.one.xla else (other, report.one)
        out.append(
            results.Row.compare(
                0, "1 GPU, XLA on vs off", "img/s", on.images_per_s, off.images_per_s, detail=_detail(on)
            )
        )
    if report.two_processes:
        first = report.two_processes[0]
        out.append(
            results.Row.compare(
                0,
                "2 processes under isic-launch",
                "img/s",
                first.images_per_s,
                base,
                target="same weights",
                passed=not judge(dataclasses.replace(report, one=None, all=None)),
                detail=_detail(first),
            )
        )
    return out


def _detail(run: GpuRun) -> str:
    memory = f"{run.peak_memory_mb:,.0f} MB peak" if run.peak_memory_mb is not None else "no GPU memory"
    return (
        f"{run.precision}, XLA {'on' if run.xla else 'off'}, all-reduce {run.all_reduce}, "
        f"{run.loss_scale_skips} loss-scale "
        f"skips, {memory}, weights {'finite' if run.finite else 'NOT FINITE'}"
    )


def list_gpus() -> list[str]:
    """The GPUs TensorFlow sees. Physical devices only: listing them reserves no GPU memory
    (logical devices would), so the children measured afterwards get every GPU whole."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def measure(
    devices: int,
    device_type: str = "GPU",
    base_filters: int = BASE_FILTERS,
    image_size: int = IMAGE_SIZE,
    per_device_batch: int = PER_GPU_BATCH,
    warmup_steps: int = WARMUP_STEPS,
    timed_steps: int = TIMED_STEPS,
    multi_worker: bool = False,
    jit_compile: str = "auto",
) -> GpuRun:
    """Trains `devices` local devices (all of them when 0) as isic-train would; see the module
    doc. `device_type` "CPU" is for tests. With `multi_worker`, this process is one worker
    of TF_CONFIG's cluster and reports the whole cluster's images/s. `jit_compile`: as
    isic-train's --jit_compile."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks import timers
    from benchmarks import training
    from launch.training import build
    from launch.training import distribute
    from launch.training import trainer

    precision = distribute.resolve_precision("auto")
    keras.mixed_precision.set_global_policy(precision)
    if multi_worker:  # before anything initialises TF's devices (as in isic-train)
        options = distribute.communication_options(0.0, has_gpus=device_type == "GPU")
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        all_reduce = options.implementation.name
    names = [d.name for d in tf.config.list_logical_devices(device_type)][: devices or None]
    if not multi_worker and len(names) > 1:
        strategy = tf.distribute.MirroredStrategy(names)
        all_reduce = _all_reduce(strategy)
    elif not multi_worker:
        strategy, all_reduce = tf.distribute.OneDeviceStrategy(names[0]), "-"
    workers = distribute.num_workers(strategy)
    global_batch = per_device_batch * strategy.num_replicas_in_sync
    config = dataclasses.replace(
        training.RECIPE, batch_size=global_batch, base_filters=base_filters, jit_compile=jit_compile
    )
    model, optimizer = build.model_and_optimizer(strategy, config, image_size, 100, precision)
    made = build.make_steps(strategy, model, optimizer, config)
    train_steps = made.train
    iterator = iter(
        distribute.distribute_datasets(
            strategy, lambda ctx: timers.constant_dataset(per_device_batch, image_size)
        )
    )
    train_steps(iterator, warmup_steps)
    device_names = [n for n in names if device_type == "GPU"]
    for name in device_names:
        tf.config.experimental.reset_memory_stats(name)
    start = time.perf_counter()
    train_steps(iterator, timed_steps)  # returns after fetching the sums: the steps are done
    seconds = time.perf_counter() - start
    peaks = [tf.config.experimental.get_memory_info(n)["peak"] for n in device_names]
    weights = [w.numpy() for w in model.weights]
    return GpuRun(
        devices=strategy.num_replicas_in_sync // workers,
        processes=workers,
        precision=precision,
        all_reduce=all_reduce,
        images_per_s=timed_steps * global_batch / seconds,
        timed_steps=timed_steps,
        # Skipped updates do not count as optimizer iterations (keras LossScaleOptimizer:
        # only the finite branch applies the inner optimizer).
        loss_scale_skips=warmup_steps + timed_steps - int(optimizer.iterations.numpy()),
        peak_memory_mb=max(peaks) / 2**20 if peaks else None,
        finite=all(bool(np.isfinite(w).all()) for w in weights),
        weights_sha256=trainer.weights_digest(model),
        xla=made.jit_compile,
    )


def _all_reduce(strategy) -> str:
    """The cross-device all-reduce a MirroredStrategy runs, e.g. "CollectiveAllReduce (NCCL)"
    (TF 2.21's default on GPUs, mirrored_strategy.py:339-341). There is no public API: this
    reads private attributes and says "unknown" when they move."""
    import tensorflow as tf

    try:
        # A float32 value: int32 ones go through the host instead.
        ops = strategy.extended._get_cross_device_ops(tf.constant(0.0))  # pylint: disable=protected-access
    except Exception:  # noqa: BLE001 - only a label
        return "unknown"
    implementation = getattr(getattr(ops, "_options", None), "implementation", None)
    name = type(ops).__name__
    return f"{name} ({implementation.name})" if implementation is not None else name


def _two_processes(gpus: list[str], kwargs: dict) -> list[GpuRun]:
    """`measure` as 2 workers under isic-launch's process group (each its half of `gpus`)."""
    from launch.cluster import process_group
    from launch.cluster.config import LaunchConfig

    out, err = io.StringIO(), io.StringIO()
    command = child.command("benchmarks.gpu:measure", dict(kwargs, devices=0, multi_worker=True))
    env = child.child_env({gpus_lib.VISIBLE: ",".join(gpus)})
    code = process_group.launch(
        command, LaunchConfig(num_workers=2, grace_seconds=30), env=env, out=out, err=err
    )
    if code:
        raise RuntimeError(f"the 2-process run failed (exit code {code}):\n{err.getvalue()[-3000:]}")
    return child.results_in(out.getvalue(), GpuRun)


def run_check(device_type: str = "GPU", **sizes) -> GpuCheckReport | None:
    """Measures the three setups (module doc); None when TensorFlow sees no GPU."""
    names = list_gpus()
    if device_type == "GPU" and not names:
        return None
    kwargs = dict(sizes, device_type=device_type)

    def run(devices: int, visible: list[str] | None, jit_compile: str = "auto") -> GpuRun:
        env = {gpus_lib.VISIBLE: ",".join(visible)} if visible else None
        kw = dict(kwargs, devices=devices, jit_compile=jit_compile)
        return child.run_child("benchmarks.gpu:measure", kw, GpuRun, env=env, timeout=CHILD_TIMEOUT_S).value

    visible = gpus_lib.node_gpus(os.environ) or [str(i) for i in range(len(names))]
    several = device_type == "GPU" and len(names) > 1
    first = visible[:1] if device_type == "GPU" else None
    one = run(1, first)
    return GpuCheckReport(
        gpus=names,
        one=one,
        one_other_xla=run(1, first, "off" if one.xla else "on"),
        all=run(0, None) if several else None,
        two_processes=_two_processes(visible, kwargs) if several else None,
    )


GPU_CHECK_FILE = "gpu_check.json"


def main(output_dir: str, floor: float = SCALING_FLOOR, device_type: str = "GPU", **sizes) -> int:
    """Runs the check, prints its table, writes output_dir/gpu_check.json; the exit status."""
    from core import files

    report = run_check(device_type, **sizes)
    if report is None:
        listed = gpus_lib.node_gpus(os.environ)
        if listed:  # the driver sees GPUs that TensorFlow cannot use: a broken setup
            print(
                f"isic-bench: nvidia-smi lists GPU(s) {','.join(listed)} but TensorFlow "
                "sees none: install TensorFlow's CUDA libraries (pip install "
                "'tensorflow[and-cuda]') and check the driver; no GPU check ran"
            )
            return 1
        print(
            "isic-bench --stages gpu: TensorFlow sees no GPU on this machine, so there is "
            "nothing to check (run it on the GPU machine before a long job)"
        )
        return 0
    os.makedirs(output_dir, exist_ok=True)
    problems = judge(report, floor)
    files.write_atomic(
        os.path.join(output_dir, GPU_CHECK_FILE),
        json.dumps(
            {
                "report": results.to_json(report),
                "scaling_floor": floor,
                "scaling_efficiency": report.scaling_efficiency,
                "problems": problems,
            },
            indent=1,
        )
        + "\n",
    )
    print(results.format_table(rows(report, floor)))
    efficiency = report.scaling_efficiency
    print(
        f"\n{len(report.gpus)} GPU(s): {', '.join(report.gpus) or device_type}; scaling "
        f"efficiency {'-' if efficiency is None else f'{efficiency:.2f}'} (floor "
        f"{floor:g}); {os.path.join(output_dir, GPU_CHECK_FILE)}"
    )
    for problem in problems:
        print(f"FAIL: {problem}")
    return 1 if problems else 0
