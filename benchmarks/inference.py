"""Inference throughput (stage 5): our `launch.inference.models.predict` against `model.predict`.

Ours is the function isic-predict and isic-evaluate call: one `predict_on_batch` per
fixed-size batch (a short last batch is padded, so there is one trace). The baseline is
the plain Keras call on the whole array, `model.predict(images, batch_size=...)`. A
third loop, "ours_xla", is ours with the forward pass compiled by XLA (`--jit_compile on`
of isic-evaluate and isic-predict): the row behind their `auto` rule. All
predict random float32 [N, S, S, 3] images held in memory with a freshly built U-Net
(weights do not change the cost), after one warm-up batch that traces the function.
Achieved GFLOP/s counts the forward FLOPs of `unet.unet_flops_per_image`.
"""

import dataclasses
import time

import numpy as np

from benchmarks import child
from launch.training.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class InferenceRun:
    """One loop's throughput, measured in one child."""

    loop: str  # "ours", "ours_xla" or "keras"
    base_filters: int
    image_size: int
    batch_size: int
    depth: int
    images: int
    first_batch_s: float  # the warm-up batch: tracing and first execution
    seconds: float
    images_per_s: float
    forward_gflop_per_image: float
    gflops: float
    gflops_per_cpu_s: float
    onednn: bool


@dataclasses.dataclass(frozen=True)
class InferenceReport:
    """Ours under the tuned environment against model.predict under TF's defaults, and ours
    with XLA against ours without."""

    ours: InferenceRun
    keras_predict: InferenceRun
    speedup: float
    ours_xla: InferenceRun
    xla_speedup: float  # ours_xla / ours, images/s


def measure_inference(
    base_filters: int,
    loop: str,
    image_size: int = 128,
    batch_size: int = 32,
    num_batches: int = 1,
    depth: int | None = None,
) -> InferenceRun:
    """Images/s of `loop` ("ours", "ours_xla" or "keras") over `num_batches` timed batches.

    depth is the U-Net's (None: isic-train's; smaller only to keep tests fast).
    """
    import keras

    from model import unet

    if loop not in ("ours", "ours_xla", "keras"):
        raise ValueError(f"loop must be 'ours', 'ours_xla' or 'keras', got {loop!r}")
    depth = unet.DEPTH if depth is None else depth
    keras.utils.set_random_seed(0)
    model = unet.build_unet(image_size, base_filters, depth, bn_momentum=TrainConfig().bn_momentum)
    images = (
        np.random.default_rng(0)
        .uniform(size=(batch_size * num_batches, image_size, image_size, 3))
        .astype(np.float32)
    )
    start = time.perf_counter()
    run = _predictor(model, loop, batch_size)
    run(images[:batch_size])  # warm-up: trace and first execution
    first = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    probabilities = run(images)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if probabilities.shape[0] != len(images):
        raise AssertionError(f"{loop} returned {probabilities.shape[0]} maps for {len(images)} images")
    flops = unet.unet_flops_per_image(image_size, base_filters, depth)
    return InferenceRun(
        loop=loop,
        base_filters=base_filters,
        image_size=image_size,
        batch_size=batch_size,
        depth=depth,
        images=len(images),
        first_batch_s=first,
        seconds=seconds,
        images_per_s=len(images) / seconds,
        forward_gflop_per_image=flops / 1e9,
        gflops=len(images) * flops / seconds / 1e9,
        gflops_per_cpu_s=len(images) * flops / cpu_seconds / 1e9,
        onednn=child.onednn_enabled(),
    )


def _predictor(model, loop: str, batch_size: int):
    """images float32 [N, S, S, 3] -> probabilities [N, ...]: isic-evaluate's batched call
    (`models.predict`) for "ours" (XLA off) and "ours_xla" (on), Keras' `model.predict` for
    "keras"."""
    if loop == "keras":
        return lambda x: model.predict(x, batch_size=batch_size, verbose=0)
    from launch.inference import models

    models.use_xla(model, "on" if loop == "ours_xla" else "off")

    def run(x):
        return np.concatenate(
            [models.predict(model, x[i : i + batch_size], batch_size) for i in range(0, len(x), batch_size)]
        )

    return run


def run_inference_benchmark(
    base_filters: int = 32, image_size: int = 128, batch_size: int = 32, num_batches: int = 1
) -> InferenceReport:
    """Ours under the tuned environment, then model.predict under TF defaults, then ours with
    XLA, back to back."""
    kwargs = {
        "base_filters": base_filters,
        "image_size": image_size,
        "batch_size": batch_size,
        "num_batches": num_batches,
    }

    def measure(loop, env):
        return child.run_child(
            "benchmarks.inference:measure_inference", dict(kwargs, loop=loop), InferenceRun, env=env
        ).value

    ours, keras_plain = measure("ours", child.TUNED_ENV), measure("keras", child.PLAIN_ENV)
    xla = measure("ours_xla", child.TUNED_ENV)
    return InferenceReport(
        ours=ours,
        keras_predict=keras_plain,
        speedup=ours.images_per_s / keras_plain.images_per_s,
        ours_xla=xla,
        xla_speedup=xla.images_per_s / ours.images_per_s,
    )
