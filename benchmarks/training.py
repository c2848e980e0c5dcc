"""Training-step benchmark: U-Net throughput, ours vs model.fit (stage 4).

Stage 3 (loop overhead, benchmarks/loop.py) drives the same helpers.

Stage 4 measures images/s of a training step of the U-Net (float32, batch 32, 128x128)
through our steps with XLA off ("ours") and on ("ours_xla") and through `model.fit` with
Keras' defaults, on the same model, loss, optimizer and in-memory random batches, in one
process (the tuned environment, as isic-train runs). Model, optimizer, loss and steps
come from isic-train's builder (launch/training/build.py) with RECIPE's options: the
optimizer, schedule and batch-norm momentum of the shipped CPU recipe
(launch/configs/isic2017_cpu.flags). `UnetRun.xla_auto` says which of ours
`--jit_compile auto` picks on the measuring machine (launch/training/xla.py).
Each loop is warmed up by one full step first (tracing, graph optimization, and the oneDNN
primitives, which are created when an op first runs: a first step costs 15-20% more on
the AMD machine). Then `rounds` rounds each time `timed_steps` steps of each loop, in
alternating order, and the best round of each counts. Achieved GFLOP/s =
images/s x `unet.unet_flops_per_image` (analytic: 2 FLOPs per multiply-add of every
convolution and transposed convolution) x 3 (`TRAINING_FLOPS_PER_FORWARD_FLOP`: forward,
gradient w.r.t. activations, gradient w.r.t. weights). The machine's float32 matmul
peak is `matmul_peak`: the best of several `tf.linalg.matmul` runs of two 4096x4096
float32 matrices (2*4096**3 FLOPs each) on all cores, measured in every child. With
`profile_ops`, two more traced steps of each give the time per op type (op_profile.py).

Every function here runs inside one benchmark child (see benchmarks/child.py), which
fixes the TF environment it is measured under.
"""

import dataclasses
import os
import time

from benchmarks import child
from benchmarks import op_profile
from benchmarks import results
from benchmarks import timers
from benchmarks.flops import MatmulPeak
from benchmarks.flops import layer_flops_per_image
from benchmarks.flops import matmul_peak
from launch.training.config import TrainConfig

# The shipped CPU recipe's optimizer (Adam, cosine decay after a 1-epoch warmup, 24 epochs
# of 100 steps), loss weights and batch-norm momentum; width, encoder and batch per row.
RECIPE = TrainConfig(
    epochs=24,
    learning_rate=3e-3,
    lr_schedule="cosine",
    warmup_epochs=1.0,
    bn_momentum=0.9,
    precision="float32",
)
LOOPS = ("ours", "ours_xla", "fit")  # our steps with --jit_compile off and on; model.fit
# The tuned child measures every width and three loops, XLA compiling each model once: on
# 2 cores shared with other jobs that ran over child.py's default 900 s.
CHILD_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class UnetMeasure:
    """What one stage-4 measurement trains and for how long (see measure_unet)."""

    base_filters: int
    loops: tuple[str, ...] = LOOPS
    batch_size: int = 32
    image_size: int = 128
    timed_steps: int = 1  # per round; the best of `rounds` rounds counts
    rounds: int = 1
    peak_size: int = 4096  # the matmul probe run before the models (0 skips it)
    peak_repeats: int = 2
    depth: int | None = None  # the U-Net's (None: isic-train's; smaller only for fast tests)
    profile_ops: bool = False  # afterwards, trace 2 more steps of each loop (op_profile)
    encoder: str = "unet"  # or a pretrained encoder under the U-Net decoder of base_filters

    def __post_init__(self):
        object.__setattr__(self, "loops", tuple(self.loops))  # JSON gives a list
        if not self.loops or set(self.loops) - set(LOOPS):
            raise ValueError(f"loops must be some of {LOOPS}, got {self.loops!r}")

    def train_config(self) -> TrainConfig:
        """What isic-train would train at this width (random encoder weights: a step costs
        the same with ImageNet's)."""
        return dataclasses.replace(
            RECIPE,
            batch_size=self.batch_size,
            base_filters=self.base_filters,
            encoder=self.encoder,
            encoder_weights="none",
        )


@dataclasses.dataclass(frozen=True)
class UnetRun:
    """Stage 4, one configuration measured in one child (see measure_unet)."""

    loop: str  # "ours", "ours_xla" or "fit"
    base_filters: int
    batch_size: int
    image_size: int
    depth: int
    timed_steps: int  # per round; the best of `rounds` rounds counts
    rounds: int
    warmup_s: float  # the first step: tracing, graph optimization, oneDNN primitives
    step_s: float
    images_per_s: float
    training_gflop_per_image: float
    gflops: float  # achieved, training FLOPs
    gflops_per_cpu_s: float
    peak: MatmulPeak | None  # the probe run in the same process just before
    onednn: bool
    intra_op_threads: int
    inter_op_threads: int
    cpus: int
    # Set by run_unet_benchmark: the child's environment and the fractions of the peak.
    env: str = ""  # "tuned" or "plain"
    fraction_of_peak: float | None = None
    fraction_of_own_probe: float | None = None
    # FLOPs per CPU-second against the probe's: what the process did with the CPU time it
    # got, so it barely moves when other processes take cores away.
    fraction_per_cpu_s: float | None = None
    ops: op_profile.OpTimes | None = None  # with profile_ops: time per op type
    # "unet", or a pretrained encoder under the U-Net decoder (model/encoder_unet.py; random
    # weights: the step costs the same with ImageNet's).
    encoder: str = "unet"
    xla_auto: bool = False  # whether --jit_compile auto compiles with XLA on this machine


@dataclasses.dataclass(frozen=True)
class UnetReport:
    """Stage 4: every run, and the peak (the best oneDNN probe of the stage)."""

    runs: tuple[UnetRun, ...]
    peak_gflops: float
    peak_gflops_per_cpu_s: float
    peak_method: str


def measure_unet(measure: UnetMeasure) -> list[UnetRun]:
    """Stage 4, one width: images/s of training steps through each of `measure.loops`.

    "ours" and "ours_xla": the builder's train steps with --jit_compile off and on, driven
    as the trainer drives them; "fit": model.fit (its steps are timed between
    on_train_batch_end callbacks, each fit call's first step untimed). Every model is
    built from the same seed, then each loop is warmed up by one step; then
    `measure.rounds` rounds time `measure.timed_steps` steps of each loop, in alternating
    order, and the best round of each loop counts. Returns one UnetRun per loop, in order.
    """
    import keras

    from launch.training import build
    from launch.training import xla

    peak = matmul_peak(measure.peak_size, measure.peak_repeats) if measure.peak_size else None
    config = measure.train_config()
    dataset = timers.constant_dataset(measure.batch_size, measure.image_size)

    def build_model():
        keras.utils.set_random_seed(0)
        return build.build_model(config, measure.image_size, measure.depth)

    # Every model is built before anything runs: each build sets the global seed, and
    # tf.random.set_seed makes a traced tf.function retrace on its next call (1.2-1.7 s at
    # 4 filters, measured). Then one warm-up step of each, so no timed step traces.
    loops = {loop: _timer(loop, config, build_model, dataset) for loop in measure.loops}
    warmup_s = {loop: _seconds(timer.run, 1) for loop, timer in loops.items()}
    best = _best_rounds(loops, measure.timed_steps, measure.rounds)
    ops = (
        {loop: op_profile.trace(lambda t=timer: t.run(2), steps=2) for loop, timer in loops.items()}
        if measure.profile_ops
        else {}
    )
    flops = _training_flops_per_image(measure, build_model)
    auto = xla.resolve_jit_compile(dataclasses.replace(config, jit_compile="auto"))
    return [
        _unet_run(measure, loop, best[loop], warmup_s[loop], flops, peak, ops.get(loop), auto)
        for loop in measure.loops
    ]


def _timer(loop: str, config: TrainConfig, build_model, dataset):
    """The timer of one loop: ours (XLA off or on) or model.fit."""
    if loop == "fit":
        return timers.FitTimer(config, build_model, dataset)
    jit = "on" if loop == "ours_xla" else "off"
    return timers.OursTimer(dataclasses.replace(config, jit_compile=jit), build_model, dataset)


def _seconds(run, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return time.perf_counter() - start


def _best_rounds(loops: dict, timed_steps: int, rounds: int) -> dict[str, tuple[float, float]]:
    """{loop: (wall, CPU) seconds of its fastest round}; the order alternates per round, so
    a slow phase of the machine does not always hit the same loop."""
    names = list(loops)
    best = {}
    for i in range(rounds):
        for loop in names if i % 2 == 0 else names[::-1]:
            seconds, cpu_seconds = loops[loop].time(timed_steps)
            if loop not in best or seconds < best[loop][0]:
                best[loop] = (seconds, cpu_seconds)
    return best


def _training_flops_per_image(measure: UnetMeasure, build_model) -> float:
    """Training FLOPs of one image: 3 x the forward pass's (analytic for the U-Net)."""
    from model import unet

    depth = unet.DEPTH if measure.depth is None else measure.depth
    forward = (
        unet.unet_flops_per_image(measure.image_size, measure.base_filters, depth)
        if measure.encoder == "unet"
        else layer_flops_per_image(build_model())
    )
    return forward * unet.TRAINING_FLOPS_PER_FORWARD_FLOP


def _unet_run(measure, loop, best, warmup_s, flops, peak, ops, xla_auto) -> UnetRun:
    """One loop's UnetRun from its best round (wall and CPU seconds)."""
    import tensorflow as tf

    from model import unet

    seconds, cpu_seconds = best
    images = measure.batch_size * measure.timed_steps
    return UnetRun(
        loop=loop,
        base_filters=measure.base_filters,
        batch_size=measure.batch_size,
        image_size=measure.image_size,
        depth=unet.DEPTH if measure.depth is None else measure.depth,
        timed_steps=measure.timed_steps,
        rounds=measure.rounds,
        warmup_s=warmup_s,
        step_s=seconds / measure.timed_steps,
        images_per_s=images / seconds,
        training_gflop_per_image=flops / 1e9,
        gflops=images / seconds * flops / 1e9,
        gflops_per_cpu_s=images * flops / cpu_seconds / 1e9,
        peak=peak,
        onednn=child.onednn_enabled(),
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        cpus=len(os.sched_getaffinity(0)),
        ops=ops,
        encoder=measure.encoder,
        xla_auto=xla_auto,
    )


def measure_unets(configs: list[dict]) -> list[UnetRun]:
    """`measure_unet(UnetMeasure(**c))` for each config, in this one process (saves a TF
    start-up each)."""
    return [run for c in configs for run in measure_unet(UnetMeasure(**c))]


def run_unet_benchmark(
    filters=(16, 32, 64),
    batch_size: int = 32,
    image_size: int = 128,
    plain_filters=(16,),
    peak_size: int = 4096,
    plain_peak_size: int = 2048,
    profile_ops: bool = False,
    quick: bool = False,
    encoders=(("efficientnet_lite0", 16),),
) -> UnetReport:
    """Stage 4: ours (XLA off and on) and model.fit for each width in one tuned child, then model.fit under
    TensorFlow's defaults (the plain child) for `plain_filters`, which shows what the
    environment alone gives. The peak is the best oneDNN matmul probe of the stage (one
    before each width); the plain child's probes (TF's default matmul, `plain_peak_size`)
    are only reported. `encoders`: (encoder, decoder base filters) pairs measured the same
    way in the tuned child, beside the U-Nets."""
    cases = unet_cases(
        filters,
        batch_size,
        image_size,
        plain_filters,
        peak_size,
        plain_peak_size,
        profile_ops,
        quick,
        encoders,
    )
    envs = {"tuned": child.TUNED_ENV, "plain": child.PLAIN_ENV}
    runs = {
        name: child.run_child(
            "benchmarks.training:measure_unets",
            {"configs": configs},
            list[UnetRun],
            env=envs[name],
            timeout=CHILD_TIMEOUT_S,
        ).value
        for name, configs in cases.items()
        if configs
    }
    return unet_report(runs, peak_size)


def unet_cases(
    filters,
    batch_size: int,
    image_size: int,
    plain_filters,
    peak_size: int,
    plain_peak_size: int,
    profile_ops: bool = False,
    quick: bool = False,
    encoders=(),
) -> dict[str, list[dict]]:
    """{"tuned": UnetMeasure fields (all LOOPS), "plain": (fit only)}, per width.

    Narrow U-Nets take more steps and rounds: a round of one loop lasts a few seconds
    and the best of 3-4 rounds keeps the noise of this shared machine below ~5%. At 64
    filters a step takes 14-40 s (AMD machines), so it runs two rounds of one step.
    """
    tuned, plain = [], []
    for encoder, f in [("unet", f) for f in filters] + list(encoders):
        common = {
            "base_filters": f,
            "batch_size": batch_size,
            "image_size": image_size,
            "timed_steps": 1 if quick else 3 if f <= 16 else 2 if f <= 32 else 1,
            "rounds": 1 if quick else 4 if f <= 16 else 3 if f <= 32 else 2,
            "peak_size": peak_size,
        }
        if encoder != "unet":  # beside the U-Net of the same child: no op trace, no plain run
            tuned.append(dict(common, loops=LOOPS, encoder=encoder))
            continue
        tuned.append(dict(common, loops=LOOPS, profile_ops=profile_ops))
        if f in plain_filters:
            plain.append(dict(common, loops=("fit",), peak_size=plain_peak_size))
    return {"tuned": tuned, "plain": plain}


def auto_ours(off, on):
    """Of our runs with XLA off and on (None: not measured), the one `--jit_compile auto`
    picks on the measured machine."""
    return on if on is not None and off.xla_auto else off


def xla_label(run) -> str:
    """Which XLA setting an "ours" run used, for a row's name."""
    return f"XLA {'on' if run.loop == 'ours_xla' else 'off'}, auto's pick"


def xla_rows(name: str, off, on) -> list:
    """Ours with XLA on against off (when both were measured)."""
    if on is None:
        return []
    return [
        results.Row.compare(
            4,
            f"{name}, ours XLA on vs off",
            "img/s",
            on.images_per_s,
            off.images_per_s,
            detail=f"--jit_compile auto picks {'on' if off.xla_auto else 'off'} here; per CPU-second "
            f"{on.gflops_per_cpu_s:.1f} vs {off.gflops_per_cpu_s:.1f} GFLOP; first step (XLA "
            f"compiles) {on.warmup_s:.0f} s vs {off.warmup_s:.0f} s",
        )
    ]


def unet_report(runs: dict[str, list[UnetRun]], peak_size: int) -> UnetReport:
    """The runs of each environment, labelled, with their fractions of the stage's peak."""
    labelled = [dataclasses.replace(r, env=env) for env, measured in runs.items() for r in measured]
    probes = [r.peak for r in labelled if r.env == "tuned" and r.peak]
    peak = max(p.gflops for p in probes)
    peak_per_cpu_s = max(p.gflops_per_cpu_s for p in probes)
    labelled = [
        dataclasses.replace(
            r,
            fraction_of_peak=r.gflops / peak,
            fraction_per_cpu_s=r.gflops_per_cpu_s / peak_per_cpu_s,
            fraction_of_own_probe=r.gflops / r.peak.gflops if r.peak else None,
        )
        for r in labelled
    ]
    return UnetReport(
        runs=tuple(labelled),
        peak_gflops=peak,
        peak_gflops_per_cpu_s=peak_per_cpu_s,
        peak_method=(
            f"best of {probes[0].repeats} timed tf.linalg.matmul runs (after a warm-up "
            f"run) of two {peak_size}x{peak_size} float32 matrices (2*{peak_size}**3 "
            "FLOPs), all cores, oneDNN on, probed in each tuned child before its "
            "measurement; the best probe of the stage"
        ),
    )
