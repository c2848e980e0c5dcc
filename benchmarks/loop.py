"""Training-loop overhead (stage 3): our host loop against model.fit on a tiny model.

Stage 3 measures the per-step cost of OUR loop, so the model is tiny (one 1x1 conv with
a sigmoid on 8x8x3 inputs, batch 8, from an in-memory repeated dataset) and the time is
the loop's. Ours is the builder's `make_steps` (benchmarks/timers.py) driven as
launch/training/trainer.py drives it: one `train_steps(iterator, n)` call per chunk of
n = steps_per_execution steps, the metric sums fetched to the host, a finiteness check,
the running sums, a Progbar update (silent) and the TensorBoard scalar (what the chief's
reporter does; summaries.Writer writes it at most once per SCALAR_SECONDS). The baseline
is `model.fit` on the same model, loss, optimizer and dataset, with Keras' default
steps_per_execution=1 and with the same chunking. Each configuration runs for
~`seconds`; ours and fit alternate `rounds` times and the best round of each counts
(other processes only ever slow a round down).
"""

import dataclasses
import tempfile
import time

import numpy as np

from benchmarks import child
from benchmarks.timers import compiled_for_fit
from benchmarks.timers import constant_dataset
from benchmarks.timers import ours_train_steps
from launch.training.config import TrainConfig

LOOP_IMAGE_SIZE = 8
LOOP_BATCH_SIZE = 8


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


def _tiny_model(image_size: int):
    import keras

    return keras.Sequential(
        [keras.Input((image_size, image_size, 3)), keras.layers.Conv2D(1, 1, activation="sigmoid")]
    )


def _run_chunks(train_steps, iterator, chunk: int, seconds: float, writer, bar) -> tuple[int, float, float]:
    """The trainer's host loop, for ~`seconds` (at least one chunk): (steps, seconds, CPU s)."""
    step, start, cpu = 0, time.perf_counter(), time.process_time()
    sums = {}
    while step == 0 or time.perf_counter() - start < seconds:
        totals = train_steps(iterator, chunk)
        step += chunk
        if not np.isfinite(totals["loss"]):
            raise FloatingPointError(f"loss {totals['loss']} in the loop benchmark")
        sums = {k: sums.get(k, 0.0) + v for k, v in totals.items()}
        images_per_s = sums["count"] / max(time.perf_counter() - start, 1e-9)
        loss = totals["loss"] / totals["count"]
        bar.update(
            step, values=[("loss", loss), ("dice", totals["dice"] / totals["count"]), ("img/s", images_per_s)]
        )
        writer.scalars(step, {"train/loss_step": loss})
    return step, time.perf_counter() - start, time.process_time() - cpu


def measure_loop(
    chunks=(1, 16, 64),
    fit_chunks=(1, 64),
    seconds: float = 0.5,
    rounds: int = 6,
    image_size: int = LOOP_IMAGE_SIZE,
    batch_size: int = LOOP_BATCH_SIZE,
) -> LoopReport:
    """Stage 3: ms per step of our loop and of model.fit with a tiny model (see module doc).

    chunks, fit_chunks: steps per tf.function call measured for ours and for model.fit.
    """
    import keras

    from launch.training import summaries

    dataset = constant_dataset(batch_size, image_size)
    with tempfile.TemporaryDirectory(prefix="isic-loop-bench-") as tmp:
        writer = summaries.Writer(tmp)
        bar = keras.utils.Progbar(None, verbose=0, stateful_metrics=("loss", "dice", "img/s"))
        config = TrainConfig(batch_size=batch_size)  # isic-train's optimizer, loss and XLA rule
        ours = {c: ours_train_steps(config, lambda: _tiny_model(image_size), dataset) for c in chunks}
        fits = {c: compiled_for_fit(_tiny_model(image_size), config, c) for c in fit_chunks}
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
                    _keep_best(best["fit"], c, steps, time.perf_counter() - start, time.process_time() - cpu)
        writer.close()
    return LoopReport(
        ours=dict(sorted(best["ours"].items())),
        fit=dict(sorted(best["fit"].items())),
        rounds=rounds,
        seconds=seconds,
        image_size=image_size,
        batch_size=batch_size,
        onednn=child.onednn_enabled(),
    )


def _keep_best(table: dict, chunk: int, steps: int, seconds: float, cpu_seconds: float) -> None:
    """Keeps the fastest round of `chunk` in table."""
    ms = 1000.0 * seconds / steps
    if chunk not in table or ms < table[chunk].ms_per_step:
        table[chunk] = LoopTiming(
            ms_per_step=ms, steps_per_s=1000.0 / ms, steps=steps, cpu_ms_per_step=1000.0 * cpu_seconds / steps
        )


def run_loop_benchmark(quick: bool = False) -> LoopReport:
    """Stage 3 in one child under the tuned environment (both loops in the same process)."""
    kwargs = {"seconds": 0.3, "rounds": 1} if quick else {}
    return child.run_child("benchmarks.loop:measure_loop", kwargs, LoopReport, env=child.TUNED_ENV).value
