"""`--jit_compile`: whether each replica's step is compiled by XLA, and its errors.

`choose_jit_compile` is the rule of `--jit_compile auto`, pure so tests can give it any
machine; `resolve_jit_compile` applies it to this process's devices and logs why. What
the compiled part holds (and what stays outside it) is described in steps.py.
"""

import contextlib

import tensorflow as tf
from absl import logging

from core.errors import UserError
from launch.training import distribute
from launch.training.config import TrainConfig

# CPU kinds on which XLA's training step measured faster than TensorFlow's graph executor
# with oneDNN (benchmarks/training.py rows, docs/performance.md "XLA"). Empty: on every
# CPU kind measured so far XLA was slower, so `auto` leaves it off on CPUs.
CPU_XLA_FASTER_FLAGS: tuple[str, ...] = ()


def choose_jit_compile(
    setting: str,
    has_gpus: bool,
    cpu_flag_set: set[str],
    sync_batch_norm_replicas: int = 0,
    deterministic: bool = False,
    cpu_xla_faster_flags: tuple[str, ...] = CPU_XLA_FASTER_FLAGS,
) -> tuple[bool, str]:
    """(compile with XLA, why) for `--jit_compile setting` ("auto", "on" or "off").

    auto: on for GPUs, where XLA fuses batch norm and the element-wise ops into the
    convolutions' neighbours (Keras' `fit` compiles there too); on CPUs only for a CPU kind
    listed in `cpu_xla_faster_flags` (a flag of /proc/cpuinfo naming a kind on which the
    benchmark measured XLA faster), else off: oneDNN's fused convolutions are faster than
    XLA's CPU code for this model (docs/performance.md). `sync_batch_norm_replicas` > 1:
    --sync_batch_norm all-reduces inside the forward pass, a collective XLA cannot hold
    in the per-replica cluster, so auto is off and "on" is an error. `deterministic`
    (--deterministic, TF op determinism): XLA refuses the max-pool gradient then ("GPU
    MaxPool gradient ops do not yet have a deterministic XLA implementation", raised on
    CPUs too), so likewise.
    """
    if deterministic:
        if setting == "on":
            raise UserError(
                "--jit_compile on cannot compile the U-Net under --deterministic (XLA has no "
                "deterministic max-pool gradient); use --jit_compile off or auto"
            )
        return False, "--deterministic (XLA has no deterministic max-pool gradient)"
    if sync_batch_norm_replicas > 1:
        if setting == "on":
            raise UserError(
                f"--jit_compile on cannot compile --sync_batch_norm over {sync_batch_norm_replicas} "
                "replicas (its all-reduce runs inside the forward pass, which XLA compiles per "
                "replica); use --jit_compile off or auto, or drop --sync_batch_norm"
            )
        return False, "--sync_batch_norm all-reduces inside the forward pass"
    if setting != "auto":
        return setting == "on", f"--jit_compile {setting}"
    if has_gpus:
        return True, "GPU (XLA fuses batch norm and element-wise ops)"
    faster = sorted(cpu_flag_set.intersection(cpu_xla_faster_flags))
    if faster:
        return True, f"CPU with {', '.join(faster)}, where XLA measured faster (docs/performance.md)"
    return False, "CPU: oneDNN's graph measured faster than XLA's CPU code (docs/performance.md)"


def resolve_jit_compile(config: TrainConfig, num_replicas: int = 1) -> bool:
    """`choose_jit_compile` of `config.jit_compile` for this process's devices and
    `num_replicas`; logs what it picked and why."""
    has_gpus = bool(tf.config.list_physical_devices("GPU"))
    flags = set() if has_gpus else distribute.this_cpu_flags()
    chosen, why = choose_jit_compile(
        config.jit_compile,
        has_gpus,
        flags,
        sync_batch_norm_replicas=num_replicas if config.sync_batch_norm else 0,
        deterministic=config.deterministic,
    )
    logging.info("--jit_compile %s: XLA %s (%s)", config.jit_compile, "on" if chosen else "off", why)
    return chosen


# What TensorFlow says when XLA cannot compile a cluster (an op without an XLA kernel, or a
# shape XLA needs at compile time); it raises them from the first call of the step.
_COMPILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)
_COMPILE_MARKERS = (
    "XLA_CPU_JIT",
    "XLA_GPU_JIT",
    "_XlaMustCompile",
    "compile-time constant",
    "tf2xla conversion failed",
)


def is_compile_error(error: Exception) -> bool:
    """Whether `error` is XLA refusing to compile a cluster (not a failure while running)."""
    return isinstance(error, _COMPILE_ERRORS) and any(m in str(error) for m in _COMPILE_MARKERS)


@contextlib.contextmanager
def compile_errors_named():
    """Turns XLA's compile errors into a UserError that names --jit_compile and the fix."""
    try:
        yield
    except _COMPILE_ERRORS as e:
        if not is_compile_error(e):
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # The line naming the op and its layer ("Detected unsupported operations ... PyFunc
        # ... {{node lambda_1/PyFunc}}"), not TF's "Graph execution error:" heading.
        what = next((line for line in lines if any(m in line for m in _COMPILE_MARKERS)), lines[0])
        raise UserError(
            "--jit_compile: XLA cannot compile the model's step (a layer uses an op or a shape "
            f"XLA does not support): {what[:500]}\nRun with --jit_compile off (the step then "
            "runs without XLA)."
        ) from None
