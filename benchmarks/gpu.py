"""`isic-bench --stages gpu` (`make gpu-check`): the check to run on a GPU machine before a
long job. Nothing here has run on a GPU yet: this repository's machines have none.

It trains the full-size U-Net (64 filters, 128x128, 32 images per GPU; gpu_measure.Sizes)
built by isic-train's builder (launch/training/build.py, the CPU recipe's optimizer:
benchmarks/training.py RECIPE) through the trainer's own train steps, 10 warm-up and
100 timed steps, each setup in its own process(es) (benchmarks/gpu_measure.py):

  1. one GPU, `--precision auto` and `--jit_compile auto` (XLA on for GPUs);
  2. one GPU with the other XLA setting (the XLA on/off row);
  3. one GPU in mixed_float16 where auto picks another precision (bfloat16 from compute
     capability 8.0): the loss-scaled step runs before a long float16 job anyway;
  4. all GPUs of the machine, mirrored (skipped with one GPU);
  5. two worker processes under isic-launch in mixed_float16 (MultiWorkerMirroredStrategy,
     each worker its half of the GPUs, NCCL between them; skipped with one GPU).

For each: images/s, loss-scale skips and every replica's loss scale, peak GPU memory, the
all-reduce TensorFlow logged it ran, and whether every weight is finite. It fails (exit
status 1) when a setup hangs (each process runs under the stall watchdog, each setup under
a deadline: the failure names the phase it hung in) or fails; on a non-finite weight;
on replicas whose loss scales differ; where NCCL was expected between GPUs and TensorFlow
ran another all-reduce; on workers that end with different weights, skips or loss scales;
on a scaling efficiency (N GPUs / (N x one GPU)) or a 2-process pace (against one process
on the same GPUs) below the floor (--gpu_scaling_floor, 0.7). Without a GPU it says so
and exits 0.
"""

import dataclasses
import io
import json
import os
import signal
import threading

from benchmarks import child
from benchmarks import results
from benchmarks.config import GPU_SCALING_FLOOR
from benchmarks.gpu_measure import GpuRun
from benchmarks.gpu_measure import Sizes
from core import watchdog
from launch.cluster import gpus as gpus_lib

SCALING_FLOOR = GPU_SCALING_FLOOR  # why 0.7: benchmarks/config.py
BASE_FILTERS = Sizes.base_filters
# Every setup runs under a deadline: the stall watchdog of each process (a phase without
# progress for gpu_measure.STALL_MINUTES) and this bound on the whole setup.
CHILD_TIMEOUT_S = 1800
MEASURE = "benchmarks.gpu_measure:measure"


@dataclasses.dataclass(frozen=True)
class GpuCheckReport:
    """Everything the check measured; `judge` decides whether it passes."""

    gpus: list[str]  # as TensorFlow names them
    one: GpuRun | None
    all: GpuRun | None
    two_processes: list[GpuRun] | None  # one per worker, in mixed_float16 (loss scaling)
    one_other_xla: GpuRun | None = None  # one GPU with the XLA setting auto does not pick
    one_float16: GpuRun | None = None  # one GPU in mixed_float16 when auto picks another
    failed: tuple[str, ...] = ()  # setups that hung or failed: where and why

    @property
    def scaling_efficiency(self) -> float | None:
        if not (self.one and self.all and self.all.devices > 1):
            return None
        return self.all.images_per_s / (self.all.devices * self.one.images_per_s)

    @property
    def two_process_efficiency(self) -> float | None:
        """2 processes over the same GPUs as the all-GPU run, against it (1.0: no loss)."""
        if not (self.all and self.two_processes):
            return None
        return self.two_processes[0].images_per_s / self.all.images_per_s


def judge(report: GpuCheckReport, floor: float = SCALING_FLOOR) -> list[str]:
    """What fails the check (empty: it passes)."""
    problems = list(report.failed)
    for name, run in _named_runs(report):
        if not run.finite:
            problems.append(
                f"{name}: non-finite weights after {run.timed_steps} steps "
                f"({run.loss_scale_skips} loss-scale skips)"
            )
        if len(set(run.loss_scales)) > 1:
            problems.append(f"{name}: the replicas' loss scales differ: {list(run.loss_scales)}")
        if run.devices * run.processes > 1 and run.device_type == "GPU" and "NCCL" not in run.all_reduce:
            problems.append(f"{name}: NCCL expected between GPUs, TensorFlow ran {run.all_reduce}")
    efficiency = report.scaling_efficiency
    if efficiency is not None and efficiency < floor:
        problems.append(
            f"scaling efficiency {efficiency:.2f} on {report.all.devices} GPUs is below the floor {floor:g}"
        )
    return problems + _judge_workers(report, floor)


def _judge_workers(report: GpuCheckReport, floor: float) -> list[str]:
    """The 2-process setup: every worker must end the same, at a pace near one process's."""
    workers = report.two_processes or []
    problems = []
    for what, key in (
        ("weights", lambda r: r.weights_sha256),
        ("loss-scale skips", lambda r: r.loss_scale_skips),
        ("loss scales", lambda r: r.loss_scales),
    ):
        if len({key(r) for r in workers}) > 1:
            values = ", ".join(f"worker {i}: {key(r)}" for i, r in enumerate(workers))
            problems.append(f"2 processes: the workers ended with different {what} ({values})")
    efficiency = report.two_process_efficiency
    if efficiency is not None and efficiency < floor:
        problems.append(
            f"2 processes reach {efficiency:.2f} of one process's images/s on the same GPUs, "
            f"below the floor {floor:g}"
        )
    return problems


def _named_runs(report: GpuCheckReport) -> list[tuple[str, GpuRun]]:
    runs = [
        ("1 GPU", report.one),
        ("1 GPU, other XLA setting", report.one_other_xla),
        ("1 GPU, mixed_float16", report.one_float16),
        ("all GPUs", report.all),
    ]
    runs += [(f"2 processes, worker {i}", r) for i, r in enumerate(report.two_processes or [])]
    return [(name, run) for name, run in runs if run is not None]


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
    if report.one_float16 is not None and report.one is not None:
        out.append(
            results.Row.compare(
                0,
                "1 GPU, mixed_float16 (loss scaling) vs auto",
                "img/s",
                report.one_float16.images_per_s,
                report.one.images_per_s,
                detail=_detail(report.one_float16),
            )
        )
    if report.two_processes:
        first = report.two_processes[0]
        versus = report.all.images_per_s if report.all else base
        out.append(
            results.Row.compare(
                0,
                "2 processes under isic-launch vs 1 process, same GPUs",
                "img/s",
                first.images_per_s,
                versus,
                target=f">= {floor:g}x, the same weights, skips and loss scales",
                passed=not _judge_workers(report, floor),
                detail=_detail(first),
            )
        )
    return out


def _detail(run: GpuRun) -> str:
    memory = f"{run.peak_memory_mb:,.0f} MB peak" if run.peak_memory_mb is not None else "no GPU memory"
    scales = "/".join(f"{v:g}" for v in run.loss_scales) or "-"
    return (
        f"{run.precision}, XLA {'on' if run.xla else 'off'}, all-reduce {run.all_reduce}, "
        f"{run.loss_scale_skips} loss-scale skips (scale {scales}), "
        f"{memory}, weights {'finite' if run.finite else 'NOT FINITE'}"
    )


def list_gpus() -> list[str]:
    """The GPUs TensorFlow sees. Physical devices only: listing them reserves no GPU memory
    (logical devices would), so the children measured afterwards get every GPU whole."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def _two_processes(gpus: list[str], kwargs: dict, command: list[str] | None = None) -> list[GpuRun]:
    """`measure` as 2 workers under isic-launch's process group (each its half of `gpus`),
    in mixed_float16 (loss scaling with NCCL, several GPUs per worker: what a float16 job
    on several machines runs). `command`: a stand-in worker (tests). Raises RuntimeError
    naming the worker and the phase when the group hangs or fails."""
    from launch.cluster import process_group
    from launch.cluster.config import LaunchConfig

    out, err = io.StringIO(), io.StringIO()
    kwargs = dict(kwargs, devices=0, multi_worker=True, precision="mixed_float16")
    command = command or child.command(MEASURE, kwargs)
    env = child.child_env({gpus_lib.VISIBLE: ",".join(gpus)} if gpus else None)
    interrupts = process_group.Interrupts()  # the deadline stops the group as a SIGTERM would
    timer = threading.Timer(CHILD_TIMEOUT_S, interrupts, args=(signal.SIGTERM,))
    timer.start()
    try:
        config = LaunchConfig(num_workers=2, grace_seconds=30)
        code = process_group.launch(command, config, env=env, out=out, err=err, interrupts=interrupts)
    finally:
        timer.cancel()
    if code:
        raise RuntimeError(_failure("2 processes", code, err.getvalue(), bool(interrupts.received)))
    return child.results_in(out.getvalue(), GpuRun)


def _failure(setup: str, code: int | str, stderr: str, deadline: bool = False) -> str:
    """One line: which setup failed, how, and the stall report (phase) where one was made."""
    stalls = [line.strip() for line in stderr.splitlines() if watchdog.STALL_MARK in line]
    how = f"no result within {CHILD_TIMEOUT_S} s (its deadline)" if deadline else f"failed ({code})"
    return f"{setup}: {how}" + (f": {stalls[0]}" if stalls else f"; last output: {stderr.strip()[-300:]}")


def run_check(device_type: str = "GPU", **sizes) -> GpuCheckReport | None:
    """Measures the setups (module doc); None when TensorFlow sees no GPU. A setup that hangs
    or fails is named in `failed` (with the phase it hung in) and the others still run."""
    names = list_gpus()
    if device_type == "GPU" and not names:
        return None
    kwargs = dict(sizes, device_type=device_type)
    failed = []

    def run(setup: str, devices: int, visible, **extra) -> GpuRun | None:
        env = {gpus_lib.VISIBLE: ",".join(visible)} if visible else None
        try:
            kw = dict(kwargs, devices=devices, **extra)
            return child.run_child(MEASURE, kw, GpuRun, env=env, timeout=CHILD_TIMEOUT_S).value
        except (RuntimeError, TimeoutError) as e:
            failed.append(_failure(setup, type(e).__name__, str(e), isinstance(e, TimeoutError)))
            return None

    visible = gpus_lib.node_gpus(os.environ) or [str(i) for i in range(len(names))]
    several = device_type == "GPU" and len(names) > 1
    first = visible[:1] if device_type == "GPU" else None
    one = run("1 GPU", 1, first)
    other = None  # the CPU path is for tests; XLA on CPUs is measured by stage 4 (xla.py)
    if device_type == "GPU":
        other = run("1 GPU, other XLA setting", 1, first, jit_compile="off" if one and one.xla else "on")
    float16 = (
        None
        if one and one.precision == "mixed_float16"
        else run("1 GPU, mixed_float16", 1, first, precision="mixed_float16")
    )
    every = run("all GPUs", 0, None) if several else None
    two = None
    if several:
        try:
            two = _two_processes(visible, kwargs)
        except RuntimeError as e:
            failed.append(str(e))
    return GpuCheckReport(names, one, every, two, other, float16, tuple(failed))


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
