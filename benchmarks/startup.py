"""Time from process start to the end of the first training step (stage 5).

Ours: `python -m launch.commands.train` (what `isic-train` runs), in a benchmark child, on
small records, with --checkpoint_every_steps=1 so that the end of step 1 leaves a file:
the time is the modification time of checkpoints/ckpt-1.index minus the wall-clock time
just before the child was spawned. It includes the interpreter and TensorFlow imports,
reading the manifest, building the model and optimizer, tracing the step, the input
pipeline's first batch (with augmentation) and the first step, plus writing that small
checkpoint. The child is stopped once the file appears.

Baseline: a plain Keras function in a fresh child doing the same work the plain way
(import, the same `pipeline.dataset.make_dataset`, `build_unet`, `compile`, `fit`),
stamping the wall-clock time in its first `on_train_batch_end`.

Both run with TensorFlow's default environment (ours must be fast as isic-train starts
by itself, whatever it sets up) and through the same child runner, so they pay the same
interpreter start-up.
"""

import dataclasses
import os
import runpy
import sys
import time

from benchmarks import child
from launch.training.config import TrainConfig
from preprocessing import pairs as pairs_lib


@dataclasses.dataclass(frozen=True)
class FirstStep:
    """Seconds from spawning a process to the end of its first training step."""

    seconds: float
    onednn: bool | None = None  # whether TensorFlow said its oneDNN kernels were on (ours)


@dataclasses.dataclass(frozen=True)
class StartupReport:
    """isic-train against the plain model.fit function, and the settings both used."""

    ours: FirstStep
    fit: FirstStep
    speedup: float
    base_filters: int
    batch_size: int
    image_size: int
    records: int


def write_records(work_dir: str, num_pairs: int = 24, image_size: int = 128) -> str:
    """Synthetic pairs (isic-synth) built into train-only records by isic-preprocess's builder."""
    from preprocessing import build
    from preprocessing import synth
    from preprocessing.config import BuildConfig

    raw, records = os.path.join(work_dir, "raw"), os.path.join(work_dir, "records")
    synth.write_dataset(raw, num_pairs, seed=0, num_workers=1, progress=False)
    config = BuildConfig(image_size=image_size, splits="1,0,0", num_workers=1)
    build.build_records([pairs_lib.dataset_dirs(raw)], records, config, progress=False)
    return records


def run_module(module: str, argv: list[str]) -> None:
    """Runs in the child: `python -m module *argv`, as the interpreter would."""
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def ours_to_first_step(
    records: str, model_dir: str, base_filters: int, batch_size: int, timeout: float = 600
) -> FirstStep:
    """Seconds from spawning `python -m launch.commands.train` to its first checkpoint."""
    marker = os.path.join(model_dir, "checkpoints", "ckpt-1.index")
    argv = [
        f"--data_dir={records}",
        f"--model_dir={model_dir}",
        "--epochs=1",
        f"--base_filters={base_filters}",
        f"--batch_size={batch_size}",
        "--checkpoint_every_steps=1",
        "--steps_per_execution=1",
        "--summary_images=0",
        "--precision=float32",  # as the model.fit baseline, on every CPU kind
    ]
    # TensorFlow's INFO lines, unfiltered (ISIC_TF_LOGS=1), say whether oneDNN is on.
    env = dict(child.PLAIN_ENV, TF_CPP_MIN_LOG_LEVEL="0", ISIC_TF_LOGS="1")
    try:
        run = child.run_child(
            "benchmarks.startup:run_module",
            {"module": "launch.commands.train", "argv": argv},
            env=env,
            timeout=timeout,
            stop_when=lambda: os.path.exists(marker),
        )
    except RuntimeError as e:
        raise RuntimeError(f"isic-train ended before its first checkpoint: {e}") from None
    if run.value is not None or not os.path.exists(marker):
        raise RuntimeError(f"isic-train ended without writing {marker}:\n{run.stderr[-3000:]}")
    return FirstStep(
        seconds=os.stat(marker).st_mtime - run.started_at,
        onednn="oneDNN custom operations are on" in run.stderr,
    )


def fit_first_step(data_dir: str, base_filters: int, batch_size: int, image_size: int) -> float:
    """Runs in the child: plain Keras training; the wall-clock time its first step ended."""
    import keras

    from model import losses
    from model import unet
    from pipeline import dataset
    from pipeline import records as records_lib

    ds = dataset.make_dataset(
        records_lib.Records.open(data_dir), "train", batch_size=batch_size, training=True
    )
    model = unet.build_unet(image_size, base_filters, bn_momentum=TrainConfig().bn_momentum)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=lambda t, p: losses.bce_dice_loss(t, p))
    ends = []

    def first_step_end(batch, logs):
        ends.append(time.time())
        model.stop_training = True

    model.fit(
        ds,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=first_step_end)],
    )
    return ends[0]


def fit_to_first_step(
    records: str, base_filters: int, batch_size: int, image_size: int, timeout: float = 600
) -> FirstStep:
    """Seconds from spawning the plain model.fit child to its first on_train_batch_end."""
    run = child.run_child(
        "benchmarks.startup:fit_first_step",
        {
            "data_dir": records,
            "base_filters": base_filters,
            "batch_size": batch_size,
            "image_size": image_size,
        },
        float,
        env=child.PLAIN_ENV,
        timeout=timeout,
    )
    return FirstStep(seconds=run.value - run.started_at)


def run_startup_benchmark(
    work_dir: str, base_filters: int = 16, batch_size: int = 8, image_size: int = 128, num_pairs: int = 24
) -> StartupReport:
    """Writes small records, then times ours and the model.fit child back to back."""
    records = write_records(work_dir, num_pairs, image_size)
    ours = ours_to_first_step(records, os.path.join(work_dir, "model"), base_filters, batch_size)
    fit = fit_to_first_step(records, base_filters, batch_size, image_size)
    return StartupReport(
        ours=ours,
        fit=fit,
        speedup=fit.seconds / ours.seconds,
        base_filters=base_filters,
        batch_size=batch_size,
        image_size=image_size,
        records=num_pairs,
    )
