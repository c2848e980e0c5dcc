"""Training-step benchmarks: loop overhead (stage 3) and U-Net throughput (stage 4).

Stage 3 measures the per-step cost of OUR loop, so the model is tiny (one 1x1 conv with
a sigmoid on 8x8x3 inputs, batch 8, from an in-memory repeated dataset) and the time is
the loop's. Ours is `launch.training.steps.make_train_steps` driven as
launch/training/trainer.py drives it: one `train_steps(iterator, n)` call per chunk of
n = steps_per_execution steps, the metric sums fetched to the host, a finiteness check,
the running sums, a Progbar update (silent) and a TensorBoard scalar per chunk (what the
chief's reporter does). The baseline is `model.fit` on the same model, loss,
optimizer and dataset, with Keras' default steps_per_execution=1 and with the same
chunking. Each configuration runs for ~`seconds`; ours and fit alternate `rounds` times
and the best round of each counts (other processes only ever slow a round down).

Stage 4 measures images/s of a training step of the U-Net (float32, batch 32, 128x128)
through our `train_steps` and through `model.fit`, after one warm-up step (tracing,
oneDNN primitive creation), on random inputs held in memory. Achieved GFLOP/s =
images/s x `unet.unet_flops_per_image` (analytic: 2 FLOPs per multiply-add of every
convolution and transposed convolution) x 3 (`TRAINING_FLOPS_PER_FORWARD_FLOP`: forward,
gradient w.r.t. activations, gradient w.r.t. weights). The machine's float32 matmul
peak is `matmul_peak`: the best of several `tf.linalg.matmul` runs of two 4096x4096
float32 matrices (2*4096**3 FLOPs each) on all cores, measured in every child.

Every function here runs inside one benchmark child (see benchmarks/child.py), which
fixes the TF environment it is measured under.
"""

import dataclasses
import os
import tempfile
import time

import numpy as np

from benchmarks import child
from launch.training.config import TrainConfig

LOOP_IMAGE_SIZE = 8
LOOP_BATCH_SIZE = 8
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
class LoopTiming:
    """The best round of one loop at one chunk size (steps per tf.function call)."""
    ms_per_step: float
    steps_per_s: float
    steps: int
    cpu_ms_per_step: float  # all threads: the steadier figure under load


@dataclasses.dataclass(frozen=True)
class LoopReport:
    """Stage 3: our loop and model.fit per chunk size, tiny model, in one process."""
    ours: dict[int, LoopTiming]
    fit: dict[int, LoopTiming]
    rounds: int
    seconds: float
    image_size: int
    batch_size: int
    onednn: bool


@dataclasses.dataclass(frozen=True)
class UnetRun:
    """Stage 4, one configuration measured in one child (see measure_unet)."""
    loop: str  # "ours" or "fit"
    base_filters: int
    batch_size: int
    image_size: int
    depth: int
    timed_steps: int
    warmup_s: float  # model building, tracing and, for fit, the first step
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
    flop = 2.0 * size ** 3
    return MatmulPeak(size=size, repeats=repeats, best_seconds=best, gflops=flop / best / 1e9,
                      gflops_per_cpu_s=flop / best_cpu / 1e9)


def _constant_dataset(batch_size: int, image_size: int):
    """One random (images [b,S,S,3], masks [b,S,S,1]) batch repeated forever, from memory."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    masks = (rng.uniform(size=(batch_size, image_size, image_size, 1)) > 0.5).astype(np.float32)
    return tf.data.Dataset.from_tensors((images, masks)).repeat()


def _ours(build_model, batch_size: int, dataset):
    """(train_steps, iterator) as launch/training/trainer.py builds them (one device)."""
    import keras
    import tensorflow as tf
    from launch.training import distribute
    from launch.training import steps as steps_lib
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():  # variables must be created in the scope, as in the trainer
        model = build_model()
        optimizer = keras.optimizers.Adam(DEFAULTS.learning_rate)
        optimizer.build(model.trainable_variables)
    train_steps = steps_lib.make_train_steps(strategy, model, optimizer, batch_size,
                                             DEFAULTS.dice_weight)
    # The trainer's own way of distributing its datasets (input options included).
    iterator = iter(distribute.distribute_datasets(strategy, lambda ctx: dataset))
    return train_steps, iterator


def _compiled_for_fit(model, steps_per_execution: int = 1):
    """The same model compiled as a plain Keras user would (Adam, our loss, no metrics)."""
    import keras
    from model import losses
    model.compile(optimizer=keras.optimizers.Adam(DEFAULTS.learning_rate),
                  steps_per_execution=steps_per_execution,
                  loss=lambda masks, probs: losses.bce_dice_loss(masks, probs, DEFAULTS.dice_weight))
    return model


def _tiny_model(image_size: int):
    import keras
    return keras.Sequential([keras.Input((image_size, image_size, 3)),
                             keras.layers.Conv2D(1, 1, activation="sigmoid")])


def _run_chunks(train_steps, iterator, chunk: int, seconds: float, writer,
                bar) -> tuple[int, float, float]:
    """The trainer's host loop, for ~`seconds` (at least one chunk): (steps, seconds, CPU s)."""
    import tensorflow as tf
    step, start, cpu = 0, time.perf_counter(), time.process_time()
    sums = {}
    while step == 0 or time.perf_counter() - start < seconds:
        totals = {k: float(v) for k, v in train_steps(iterator, tf.constant(chunk)).items()}
        step += chunk
        if not np.isfinite(totals["loss"]):
            raise FloatingPointError(f"loss {totals['loss']} in the loop benchmark")
        sums = {k: sums.get(k, 0.0) + v for k, v in totals.items()}
        images_per_s = sums["count"] / max(time.perf_counter() - start, 1e-9)
        loss = totals["loss"] / totals["count"]
        bar.update(step, values=[("loss", loss), ("dice", totals["dice"] / totals["count"]),
                                 ("img/s", images_per_s)])
        writer.scalars(step, {"train/loss_step": loss})
    return step, time.perf_counter() - start, time.process_time() - cpu


def measure_loop(chunks=(1, 16, 64), fit_chunks=(1, 64), seconds: float = 1.0, rounds: int = 2,
                 image_size: int = LOOP_IMAGE_SIZE, batch_size: int = LOOP_BATCH_SIZE) -> LoopReport:
    """Stage 3: ms per step of our loop and of model.fit with a tiny model (see module doc).

    chunks, fit_chunks: steps per tf.function call measured for ours and for model.fit.
    """
    import keras
    from launch.training import summaries
    dataset = _constant_dataset(batch_size, image_size)
    with tempfile.TemporaryDirectory(prefix="isic-loop-bench-") as tmp:
        writer = summaries.Writer(tmp)
        bar = keras.utils.Progbar(None, verbose=0, stateful_metrics=("loss", "dice", "img/s"))
        ours = {c: _ours(lambda: _tiny_model(image_size), batch_size, dataset) for c in chunks}
        fits = {c: _compiled_for_fit(_tiny_model(image_size), c) for c in fit_chunks}
        for c, (train_steps, iterator) in ours.items():  # warm-up: trace each chunk size
            _run_chunks(train_steps, iterator, c, 0.0, writer, bar)
        for c, model in fits.items():
            model.fit(dataset, steps_per_epoch=2 * c, epochs=1, verbose=0, shuffle=False)
        best = {"ours": {}, "fit": {}}
        for _ in range(rounds):
            for c in sorted(set(chunks) | set(fit_chunks)):
                steps = None
                if c in ours:
                    steps, taken, cpu = _run_chunks(*ours[c], c, seconds, writer, bar)
                    _keep_best(best["ours"], c, steps, taken, cpu)
                if c in fits:
                    steps = steps or max(c, int(seconds * 1000) // c * c)
                    start, cpu = time.perf_counter(), time.process_time()
                    fits[c].fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
                    _keep_best(best["fit"], c, steps, time.perf_counter() - start,
                               time.process_time() - cpu)
        writer.close()
    return LoopReport(ours=dict(sorted(best["ours"].items())), fit=dict(sorted(best["fit"].items())),
                      rounds=rounds, seconds=seconds, image_size=image_size,
                      batch_size=batch_size, onednn=child.onednn_enabled())


def _keep_best(table: dict, chunk: int, steps: int, seconds: float, cpu_seconds: float) -> None:
    """Keeps the fastest round of `chunk` in table."""
    ms = 1000.0 * seconds / steps
    if chunk not in table or ms < table[chunk].ms_per_step:
        table[chunk] = LoopTiming(ms_per_step=ms, steps_per_s=1000.0 / ms, steps=steps,
                                  cpu_ms_per_step=1000.0 * cpu_seconds / steps)


def measure_unet(base_filters: int, loop: str, batch_size: int = 32, image_size: int = 128,
                 timed_steps: int = 1, peak_size: int = 4096, peak_repeats: int = 2,
                 depth: int | None = None) -> UnetRun:
    """Stage 4, one configuration: images/s of U-Net training steps through `loop`.

    Args:
      loop: "ours" (launch.training.steps.make_train_steps; warmed up by a 0-step call, which
        traces and optimizes the graph, then all timed steps in one call) or "fit"
        (model.fit, steps_per_execution 1: one warm-up step, the timed steps measured
        between on_train_batch_end callbacks; Keras has no call that traces without
        running a step). After the 0-step call our first step costs about as much as later
        ones (docs/performance.md), so it is timed directly.
      timed_steps: steps timed after the warm-up.
      peak_size, peak_repeats: the matmul probe run in this process before the model
        (0 skips it).
      depth: the U-Net's depth (None: isic-train's; smaller only to keep tests fast).
    """
    import keras
    import tensorflow as tf
    from model import unet
    if loop not in ("ours", "fit"):
        raise ValueError(f"loop must be 'ours' or 'fit', got {loop!r}")
    depth = unet.DEPTH if depth is None else depth
    peak = matmul_peak(peak_size, peak_repeats) if peak_size else None
    keras.utils.set_random_seed(0)
    dataset = _constant_dataset(batch_size, image_size)

    def build():
        return unet.build_unet(image_size, base_filters, depth, bn_momentum=DEFAULTS.bn_momentum)

    timed = _time_ours if loop == "ours" else _time_fit
    warmup, seconds, cpu_seconds = timed(build, batch_size, dataset, timed_steps)
    images_per_s = batch_size * timed_steps / seconds
    flops = (unet.unet_flops_per_image(image_size, base_filters, depth)
             * unet.TRAINING_FLOPS_PER_FORWARD_FLOP)
    return UnetRun(
        loop=loop, base_filters=base_filters, batch_size=batch_size, image_size=image_size,
        depth=depth, timed_steps=timed_steps, warmup_s=warmup, step_s=seconds / timed_steps,
        images_per_s=images_per_s, training_gflop_per_image=flops / 1e9,
        gflops=images_per_s * flops / 1e9,
        gflops_per_cpu_s=batch_size * timed_steps * flops / cpu_seconds / 1e9, peak=peak,
        onednn=child.onednn_enabled(),
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        cpus=len(os.sched_getaffinity(0)))


def _time_ours(build, batch_size: int, dataset, timed_steps: int) -> tuple[float, float, float]:
    """(warm-up, wall, CPU) seconds: a 0-step call traces, then one call of the timed steps."""
    import tensorflow as tf
    start = time.perf_counter()
    train_steps, iterator = _ours(build, batch_size, dataset)
    train_steps(iterator, tf.constant(0))
    warmup = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    float(train_steps(iterator, tf.constant(timed_steps))["loss"])
    return warmup, time.perf_counter() - start, time.process_time() - cpu


def _time_fit(build, batch_size: int, dataset, timed_steps: int) -> tuple[float, float, float]:
    """(warm-up, wall, CPU) seconds of model.fit: from the first step's end to the last's."""
    del batch_size  # the dataset's
    import keras
    start, ends = time.perf_counter(), []
    stamp = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(
        (time.perf_counter(), time.process_time())))
    _compiled_for_fit(build()).fit(dataset, steps_per_epoch=1 + timed_steps, epochs=1, verbose=0,
                                   shuffle=False, callbacks=[stamp])
    return ends[0][0] - start, ends[-1][0] - ends[0][0], ends[-1][1] - ends[0][1]


def measure_unets(configs: list[dict]) -> list[UnetRun]:
    """`measure_unet(**c)` for each config, in this one process (saves a TF start-up each)."""
    return [measure_unet(**c) for c in configs]


def run_loop_benchmark(quick: bool = False) -> LoopReport:
    """Stage 3 in one child under the tuned environment (both loops in the same process)."""
    kwargs = {"seconds": 0.3, "rounds": 1} if quick else {}
    return child.run_child("benchmarks.training:measure_loop", kwargs, LoopReport,
                           env=child.TUNED_ENV).value


def run_unet_benchmark(filters=(16, 32, 64), batch_size: int = 32, image_size: int = 128,
                       fit_tuned_filters=(16,), peak_size: int = 4096,
                       plain_peak_size: int = 2048) -> UnetReport:
    """Stage 4: ours for each width (tuned env), then plain model.fit (TF defaults).

    For the widths in `fit_tuned_filters`, model.fit also runs under the tuned
    environment, in the same process as ours, which separates what the environment gives
    from what the loop gives. The peak is the best oneDNN matmul probe of the stage (one
    before each tuned measurement); the plain children's probes (TF's default matmul,
    `plain_peak_size`) are only reported.
    """
    # Two children, so TensorFlow starts twice rather than twice per width: the tuned one
    # runs ours (and model.fit, for fit_tuned_filters) for every width, then the plain one
    # runs model.fit for every width. A probe precedes each measurement.
    cases = unet_cases(filters, batch_size, image_size, fit_tuned_filters, peak_size,
                       plain_peak_size)
    envs = {"tuned": child.TUNED_ENV, "plain": child.PLAIN_ENV}
    runs = {name: child.run_child("benchmarks.training:measure_unets", {"configs": configs},
                                  list[UnetRun], env=envs[name]).value
            for name, configs in cases.items()}
    return unet_report(runs, peak_size)


def unet_cases(filters, batch_size: int, image_size: int, fit_tuned_filters, peak_size: int,
               plain_peak_size: int) -> dict[str, list[dict]]:
    """{"tuned": measure_unet kwargs for ours (and fit), "plain": for model.fit}."""
    tuned, plain = [], []
    for f in filters:
        common = {"base_filters": f, "batch_size": batch_size, "image_size": image_size,
                  "timed_steps": 2 if f <= 16 else 1, "peak_size": peak_size}
        tuned.append(dict(common, loop="ours"))
        if f in fit_tuned_filters:
            tuned.append(dict(common, loop="fit"))
        plain.append(dict(common, loop="fit", peak_size=plain_peak_size))
    return {"tuned": tuned, "plain": plain}


def unet_report(runs: dict[str, list[UnetRun]], peak_size: int) -> UnetReport:
    """The runs of each environment, labelled, with their fractions of the stage's peak."""
    labelled = [dataclasses.replace(r, env=env) for env, measured in runs.items() for r in measured]
    probes = [r.peak for r in labelled if r.env == "tuned" and r.peak]
    peak = max(p.gflops for p in probes)
    peak_per_cpu_s = max(p.gflops_per_cpu_s for p in probes)
    labelled = [dataclasses.replace(
        r, fraction_of_peak=r.gflops / peak, fraction_per_cpu_s=r.gflops_per_cpu_s / peak_per_cpu_s,
        fraction_of_own_probe=r.gflops / r.peak.gflops if r.peak else None) for r in labelled]
    return UnetReport(
        runs=tuple(labelled), peak_gflops=peak, peak_gflops_per_cpu_s=peak_per_cpu_s,
        peak_method=(f"best of {probes[0].repeats} timed tf.linalg.matmul runs (after a warm-up "
                     f"run) of two {peak_size}x{peak_size} float32 matrices (2*{peak_size}**3 "
                     "FLOPs), all cores, oneDNN on, probed in each tuned child before its "
                     "measurement; the best probe of the stage"))
