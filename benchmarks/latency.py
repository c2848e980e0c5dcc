"""Inference latency of the exported formats (stage 6), as NVIDIA's DeepLearningExamples
report inference: latency percentiles at batch 1 and throughput at a large batch.

One child process (isic-train's environment: oneDNN on) builds a U-Net at
--inference_filters (weights do not change the cost), exports it as isic-export does
(launch/export/serving.py, runtimes.py) and measures, on the same random float32
inputs [B, S, S, 3]:

  the network  Keras `predict_on_batch`, the SavedModel's `network` signature (exported
               without TTA, like the others), ONNX Runtime, LiteRT: `runs` calls at
               batch 1 -> p50 / p90 / p99 ms; calls at batch 32 -> images/s
  end to end   one synthetic JPEG (about 1000 x 750) to its mask: the SavedModel's
               `segment` signature against isic-predict's Python path (Pillow decode and
               resize, Keras, Pillow resize back, numpy post-processing), both with the
               default inference settings (TTA and post-processing on) -> ms per image

Each runtime gets one untimed call at each batch size first (tracing, allocation). Every
runtime may use all cores (TensorFlow's and ONNX Runtime's defaults; LiteRT is given
os.cpu_count() threads). A format whose packages are missing is skipped and named.
"""

import dataclasses
import io
import os
import tempfile
import time

import numpy as np

from benchmarks import child
from benchmarks.results import Row

STAGE = 6
THROUGHPUT_BATCH = 32


@dataclasses.dataclass(frozen=True)
class RuntimeLatency:
    """One runtime's figures."""

    runtime: str
    p50_ms: float  # batch 1 (end to end: one image)
    p90_ms: float
    p99_ms: float
    images_per_s: float | None  # at THROUGHPUT_BATCH (None end to end)


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """Stage 6: the network in each runtime, and one image end to end."""

    base_filters: int
    image_size: int
    runs: int
    cores: int
    network: list[RuntimeLatency]
    end_to_end: list[RuntimeLatency]
    end_to_end_image: str
    skipped: list[str]


def _percentiles(seconds: list[float]) -> tuple[float, float, float]:
    p50, p90, p99 = np.percentile(np.asarray(seconds) * 1000.0, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def _time_calls(fn, x, runs: int) -> list[float]:
    fn(x)  # untimed: tracing, allocation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return times


def _network_latency(name, predict, runs, throughput_batches, rng, image_size) -> RuntimeLatency:
    one = rng.uniform(size=(1, image_size, image_size, 3)).astype(np.float32)
    many = rng.uniform(size=(THROUGHPUT_BATCH, image_size, image_size, 3)).astype(np.float32)
    p50, p90, p99 = _percentiles(_time_calls(predict, one, runs))
    batch_times = _time_calls(predict, many, throughput_batches)
    return RuntimeLatency(name, p50, p90, p99, THROUGHPUT_BATCH * len(batch_times) / sum(batch_times))


def _predictors(model, work_dir: str, skipped: list[str]) -> dict:
    """{runtime name: float32 [N, S, S, 3] -> probabilities} for every available format,
    plus the loaded SavedModel under "_served"."""
    import tensorflow as tf

    from launch.export import runtimes
    from launch.export import serving
    from launch.inference.config import InferenceConfig

    # The `network` signature applies TTA when its config does (8 network passes, the
    # default since issue 11); the other runtimes hold the network alone, so the one
    # compared with them is exported without TTA. End to end uses the defaults.
    served = {}
    for name, config in (("serving-network", InferenceConfig(tta=False)), ("serving", InferenceConfig())):
        serving.write_saved_model(model, os.path.join(work_dir, name), config)
        served[name] = tf.saved_model.load(os.path.join(work_dir, name))
    network = served["serving-network"].signatures["network"]
    found = {
        "Keras": runtimes.keras_predictor(model),
        "SavedModel `network`": lambda x: network(images=tf.constant(x))["probabilities"].numpy(),
        "_served": served["serving"],
    }
    for name, missing, write, predictor, file in (
        ("ONNX Runtime", runtimes.onnx_missing, runtimes.write_onnx, runtimes.onnx_predictor, "m.onnx"),
        ("LiteRT", runtimes.litert_missing, runtimes.write_tflite, runtimes.litert_predictor, "m.tflite"),
    ):
        reason = missing()
        if reason:
            skipped.append(f"{name}: {reason}")
            continue
        write(model, os.path.join(work_dir, file))
        found[name] = predictor(os.path.join(work_dir, file))
    return found


def _end_to_end(model, served, runs: int) -> tuple[list[RuntimeLatency], str]:
    """isic-predict's Python path and the `segment` signature on one synthetic JPEG."""
    import tensorflow as tf
    from PIL import Image

    from launch.inference import models
    from launch.inference import segment
    from launch.inference.config import InferenceConfig
    from pipeline import pixels
    from preprocessing import decode
    from preprocessing import synth

    picture, _ = synth.make_pair(0, 0)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    contents = buffer.getvalue()
    config, size = InferenceConfig(), models.model_image_size(model)
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(contents)
        f.flush()

        def python_path(path):
            image, original = decode.load_image(path, size)
            p = segment.probabilities(model, pixels.to_unit_range(image[None]), config)[0]
            return segment.to_mask(p, config, original)

        ours = _percentiles(_time_calls(python_path, f.name, runs))
    signature = served.signatures["segment"]
    graph = _percentiles(
        _time_calls(lambda c: signature(image_bytes=tf.constant(c))["mask"].numpy(), contents, runs)
    )
    rows = [
        RuntimeLatency("isic-predict (Python)", *ours, None),
        RuntimeLatency("SavedModel `segment`", *graph, None),
    ]
    return rows, f"{picture.shape[1]}x{picture.shape[0]} JPEG"


def measure_latency(
    base_filters: int = 32,
    image_size: int = 128,
    depth: int | None = None,
    runs: int = 50,
    throughput_batches: int = 3,
    end_to_end_runs: int = 10,
) -> LatencyReport:
    """The figures of the module docstring, measured in this process."""
    import keras

    from launch.training.config import TrainConfig
    from model import unet

    depth = unet.DEPTH if depth is None else depth
    keras.utils.set_random_seed(0)
    model = unet.build_unet(image_size, base_filters, depth, bn_momentum=TrainConfig().bn_momentum)
    rng = np.random.default_rng(0)
    skipped = []
    with tempfile.TemporaryDirectory(prefix="isic-latency-") as work_dir:
        predictors = _predictors(model, work_dir, skipped)
        served = predictors.pop("_served")
        network = [
            _network_latency(name, fn, runs, throughput_batches, rng, image_size)
            for name, fn in predictors.items()
        ]
        end_to_end, image = _end_to_end(model, served, end_to_end_runs)
    return LatencyReport(
        base_filters, image_size, runs, os.cpu_count() or 1, network, end_to_end, image, skipped
    )


def run_stage(config, data_dir, work_dir) -> LatencyReport:
    """Stage 6 in a child under isic-train's environment (--quick: a tiny U-Net of depth 2)."""
    del data_dir, work_dir
    quick = dict(base_filters=4, image_size=32, depth=2, runs=5, throughput_batches=1, end_to_end_runs=2)
    kwargs = quick if config.quick else {"base_filters": config.inference_filters}
    return child.run_child(
        "benchmarks.latency:measure_latency", kwargs, LatencyReport, env=child.TUNED_ENV
    ).value


def rows(report: LatencyReport) -> list[Row]:
    """Latency and throughput rows, each against Keras (end to end: against isic-predict)."""
    keras_run = report.network[0]
    width = f"U-Net {report.base_filters} filters, {report.image_size}px"
    table = []
    for r in report.network:
        baseline = None if r is keras_run else keras_run
        table.append(
            Row.compare(
                STAGE,
                f"latency batch 1, {r.runtime}",
                "ms p50",
                r.p50_ms,
                baseline.p50_ms if baseline else None,
                lower_is_better=True,
                detail=f"p90 {r.p90_ms:.2f}, p99 {r.p99_ms:.2f} ms; {width}"
                + ("; baseline: Keras" if baseline else ""),
            )
        )
    for r in report.network:
        baseline = None if r is keras_run else keras_run
        table.append(
            Row.compare(
                STAGE,
                f"throughput batch {THROUGHPUT_BATCH}, {r.runtime}",
                "img/s",
                r.images_per_s,
                baseline.images_per_s if baseline else None,
                detail=f"{report.cores} cores" + ("; baseline: Keras" if baseline else ""),
            )
        )
    python_path, graph = report.end_to_end
    table.append(
        Row.compare(
            STAGE,
            f"end to end, one {report.end_to_end_image} to its mask, {graph.runtime}",
            "ms p50",
            graph.p50_ms,
            python_path.p50_ms,
            lower_is_better=True,
            detail=f"p90 {graph.p90_ms:.1f} ms; baseline: {python_path.runtime} "
            f"(p90 {python_path.p90_ms:.1f} ms)",
        )
    )
    for reason in report.skipped:
        table.append(Row(STAGE, f"skipped: {reason}", "", None, None, None, "", None))
    return table
