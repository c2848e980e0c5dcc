"""Training-step benchmark: U-Net throughput, ours vs model.fit (stage 4).

Stage 3 (loop overhead, benchmarks/loop.py) drives the same helpers.

Stage 4 measures images/s of a training step of the U-Net (float32, batch 32, 128x128)
through our `train_steps` and through `model.fit` on the same model, loss, optimizer and
in-memory random batches, in one process (the tuned environment, as isic-train runs).
Both are warmed up by one full step first (tracing, graph optimization, and the oneDNN
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

import numpy as np

from benchmarks import child
from benchmarks import op_profile
from launch.training.config import TrainConfig

DEFAULTS = TrainConfig()  # isic-train's defaults: loss weights, batch-norm momentum


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
    """Best float32 matmul of one process: [size, size] @ [size, size], all cores."""

    size: int
    repeats: int
    best_seconds: float
    gflops: float
    gflops_per_cpu_s: float  # per CPU-second of all threads: steadier under other load


@dataclasses.dataclass(frozen=True)
class UnetRun:
    """Stage 4, one configuration measured in one child (see measure_unet)."""

    loop: str  # "ours" or "fit"
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


@dataclasses.dataclass(frozen=True)
class UnetReport:
    """Stage 4: every run, and the peak (the best oneDNN probe of the stage)."""

    runs: tuple[UnetRun, ...]
    peak_gflops: float
    peak_gflops_per_cpu_s: float
    peak_method: str


def matmul_peak(size: int = 4096, repeats: int = 4) -> MatmulPeak:
    """Best float32 matmul GFLOP/s of this process: [size, size] @ [size, size], all cores."""
    import tensorflow as tf

    a = tf.random.uniform([size, size], dtype=tf.float32)
    b = tf.random.uniform([size, size], dtype=tf.float32)
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()  # warm-up: kernel selection, memory
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    flop = 2.0 * size**3
    return MatmulPeak(
        size=size,
        repeats=repeats,
        best_seconds=best,
        gflops=flop / best / 1e9,
        gflops_per_cpu_s=flop / best_cpu / 1e9,
    )


def constant_dataset(batch_size: int, image_size: int):
    """One random (images [b,S,S,3], masks [b,S,S,1]) batch repeated forever, from memory."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    masks = (rng.uniform(size=(batch_size, image_size, image_size, 1)) > 0.5).astype(np.float32)
    return tf.data.Dataset.from_tensors((images, masks)).repeat()


def ours_train_steps(build_model, batch_size: int, dataset):
    """(train_steps, iterator) as launch/training/trainer.py builds them (one device)."""
    import keras
    import tensorflow as tf

    from launch.training import distribute
    from launch.training import preemption
    from launch.training import steps as steps_lib
    from model import losses

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():  # variables must be created in the scope, as in the trainer
        model = build_model()
        optimizer = keras.optimizers.Adam(DEFAULTS.learning_rate)
        optimizer.build(model.trainable_variables)
    # The trainer's stop flag too (launch/training/preemption.py): one read per step.
    with tf.device(preemption.HOST):
        stop = tf.Variable(False, trainable=False)
    train_steps = steps_lib.make_train_steps(
        strategy,
        model,
        optimizer,
        batch_size,
        losses.training_loss(DEFAULTS.dice_weight, DEFAULTS.recall_weight),
        stop=stop,
    )
    # The trainer's own way of distributing its datasets (input options included).
    iterator = iter(distribute.distribute_datasets(strategy, lambda ctx: dataset))
    return train_steps, iterator


def compiled_for_fit(model, steps_per_execution: int = 1):
    """The same model compiled as a plain Keras user would (Adam, our loss, no metrics)."""
    import keras

    from model import losses

    model.compile(
        optimizer=keras.optimizers.Adam(DEFAULTS.learning_rate),
        steps_per_execution=steps_per_execution,
        loss=losses.training_loss(DEFAULTS.dice_weight, DEFAULTS.recall_weight),
    )
    return model


def measure_unet(
    base_filters: int,
    loops=("ours", "fit"),
    batch_size: int = 32,
    image_size: int = 128,
    timed_steps: int = 1,
    rounds: int = 1,
    peak_size: int = 4096,
    peak_repeats: int = 2,
    depth: int | None = None,
    profile_ops: bool = False,
    encoder: str = "unet",
) -> list[UnetRun]:
    """Stage 4, one width: images/s of U-Net training steps through each of `loops`.

    Args:
      loops: "ours" (launch.training.steps.make_train_steps, as the trainer drives it)
        and/or "fit" (model.fit; its steps are timed between on_train_batch_end callbacks,
        each fit call's first step untimed). Both models are built from the same seed,
        then each is warmed up by one step; then `rounds` rounds time `timed_steps` steps
        of each loop, in alternating order, and the best round of each loop counts.
      peak_size, peak_repeats: the matmul probe run in this process before the models
        (0 skips it).
      depth: the U-Net's depth (None: isic-train's; smaller only to keep tests fast).
      profile_ops: afterwards, trace 2 more steps of each loop (op_profile.trace).
      encoder: "unet", or a pretrained encoder with the U-Net decoder of `base_filters`.
    Returns:
      One UnetRun per loop, in `loops` order.
    """
    import keras
    import tensorflow as tf

    from model import unet

    if not loops or set(loops) - {"ours", "fit"}:
        raise ValueError(f"loops must be 'ours' and/or 'fit', got {loops!r}")
    depth = unet.DEPTH if depth is None else depth
    peak = matmul_peak(peak_size, peak_repeats) if peak_size else None
    dataset = constant_dataset(batch_size, image_size)

    def build():
        keras.utils.set_random_seed(0)
        if encoder != "unet":
            from model import encoder_unet

            return encoder_unet.build_encoder_unet(
                image_size, base_filters, encoder, "none", bn_momentum=DEFAULTS.bn_momentum
            )
        return unet.build_unet(image_size, base_filters, depth, bn_momentum=DEFAULTS.bn_momentum)

    # Every model is built before anything runs: each build sets the global seed, and
    # tf.random.set_seed makes a traced tf.function retrace on its next call (1.2-1.7 s at
    # 4 filters, measured). Then one warm-up step of each, so no timed step traces.
    timers = {
        loop: (_OursTimer if loop == "ours" else _FitTimer)(build, batch_size, dataset) for loop in loops
    }
    warmup_s = {}
    for loop, timer in timers.items():
        start = time.perf_counter()
        timer.run(1)
        warmup_s[loop] = time.perf_counter() - start
    best = {}
    for i in range(rounds):
        for loop in loops if i % 2 == 0 else loops[::-1]:
            seconds, cpu_seconds = timers[loop].time(timed_steps)
            if loop not in best or seconds < best[loop][0]:
                best[loop] = (seconds, cpu_seconds)
    ops = (
        {loop: op_profile.trace(lambda loop=loop: timers[loop].run(2), steps=2) for loop in loops}
        if profile_ops
        else {}
    )
    forward = (
        unet.unet_flops_per_image(image_size, base_filters, depth)
        if encoder == "unet"
        else layer_flops_per_image(build())
    )
    flops = forward * unet.TRAINING_FLOPS_PER_FORWARD_FLOP
    runs = []
    for loop in loops:
        seconds, cpu_seconds = best[loop]
        images_per_s = batch_size * timed_steps / seconds
        runs.append(
            UnetRun(
                loop=loop,
                base_filters=base_filters,
                batch_size=batch_size,
                image_size=image_size,
                depth=depth,
                timed_steps=timed_steps,
                rounds=rounds,
                warmup_s=warmup_s[loop],
                step_s=seconds / timed_steps,
                images_per_s=images_per_s,
                training_gflop_per_image=flops / 1e9,
                gflops=images_per_s * flops / 1e9,
                gflops_per_cpu_s=batch_size * timed_steps * flops / cpu_seconds / 1e9,
                peak=peak,
                onednn=child.onednn_enabled(),
                intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
                cpus=len(os.sched_getaffinity(0)),
                ops=ops.get(loop),
                encoder=encoder,
            )
        )
    return runs


def layer_flops_per_image(model) -> float:
    """Forward FLOPs of one image, 2 per multiply-add of every convolution and dense layer,
    from the built layers' shapes (the U-Net's analytic count, for any model)."""
    import keras

    macs = 0
    for layer in model.layers:
        if not isinstance(
            layer,
            (
                keras.layers.Conv2D,
                keras.layers.Conv2DTranspose,
                keras.layers.DepthwiseConv2D,
                keras.layers.Dense,
            ),
        ):
            continue
        kernel = layer.kernel.shape  # [kh, kw, c_in, c_out or multiplier]
        if isinstance(layer, keras.layers.Conv2DTranspose):  # each input pixel scatters
            macs += int(np.prod(layer.input.shape[1:3])) * int(np.prod(kernel))
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            macs += int(np.prod(layer.output.shape[1:])) * kernel[0] * kernel[1]
        elif isinstance(layer, keras.layers.Conv2D):
            macs += int(np.prod(layer.output.shape[1:])) * kernel[0] * kernel[1] * kernel[2]
        else:
            macs += int(np.prod(kernel))
    return 2.0 * macs


class _OursTimer:
    """Our train_steps on one CPU replica."""

    def __init__(self, build, batch_size: int, dataset):
        self._train_steps, self._iterator = ours_train_steps(build, batch_size, dataset)

    def run(self, steps: int) -> None:
        self._train_steps(self._iterator, steps)  # returns once the sums are fetched

    def time(self, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of one call of `steps` steps."""
        start, cpu = time.perf_counter(), time.process_time()
        self.run(steps)
        return time.perf_counter() - start, time.process_time() - cpu


class _FitTimer:
    """model.fit on the same model, compiled as a plain Keras user would."""

    def __init__(self, build, batch_size: int, dataset):
        del batch_size  # the dataset's
        self._model = compiled_for_fit(build())
        self._dataset = dataset

    def run(self, steps: int, callbacks=()) -> None:
        self._model.fit(
            self._dataset,
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=list(callbacks),
        )

    def time(self, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of `steps` steps: from the end of an untimed first step of
        the fit call (its iterator and callbacks start there) to the end of the last."""
        import keras

        ends = []
        stamp = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: ends.append((time.perf_counter(), time.process_time()))
        )
        self.run(1 + steps, callbacks=[stamp])
        return ends[-1][0] - ends[0][0], ends[-1][1] - ends[0][1]


def measure_unets(configs: list[dict]) -> list[UnetRun]:
    """`measure_unet(**c)` for each config, in this one process (saves a TF start-up each)."""
    return [run for c in configs for run in measure_unet(**c)]


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
    """Stage 4: ours and model.fit for each width in one tuned child, then model.fit under
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
            "benchmarks.training:measure_unets", {"configs": configs}, list[UnetRun], env=envs[name]
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
    """{"tuned": measure_unet kwargs (ours and fit), "plain": (fit only)}, per width.

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
            tuned.append(dict(common, loops=("ours", "fit"), encoder=encoder))
            continue
        tuned.append(dict(common, loops=("ours", "fit"), profile_ops=profile_ops))
        if f in plain_filters:
            plain.append(dict(common, loops=("fit",), peak_size=plain_peak_size))
    return {"tuned": tuned, "plain": plain}


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
