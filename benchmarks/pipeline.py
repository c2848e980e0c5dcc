"""Stage 2: input-pipeline throughput against the original script's loader, in one run.

Ours: `pipeline.make_dataset(training=True, augment=True)` on 128x128 TFRecords (a fresh
dataset per epoch, as the trainer builds them; the first epoch is a warm-up that also
compiles the XLA augmentation). Baseline: a Python generator that opens the original
JPEG/PNG files with PIL and resizes them per batch, as the original script did (no
augmentation at all). Each side runs in its own benchmark child pinned to ONE core
(`sched_setaffinity` before any import, TF intra/inter-op threads 1), so its images/s is a
per-core figure; ours is also run on all cores. Besides wall-clock images/s we report
images per CPU-second of the process, which is less sensitive to other load on the box.
Run through `isic-bench --stages 2`.
"""

import dataclasses
import glob
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import child
from benchmarks import paths
from preprocessing import tiny_records


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Images delivered by one side in one child, over wall and CPU time."""

    images: int
    seconds: float
    cpu_seconds: float
    images_per_s: float
    images_per_cpu_s: float
    # Ours only: CPU seconds per epoch spent building a dataset and its iterator, and
    # images per CPU-second without them.
    setup_cpu_seconds_per_epoch: float | None = None
    steady_images_per_cpu_s: float | None = None


@dataclasses.dataclass(frozen=True)
class PipelineReport:
    """Everything stage 2 measured, and its settings."""

    pipeline_1core: Throughput
    pipeline_1core_no_augment: Throughput
    pipeline_all_cores: Throughput
    baseline_1core: Throughput
    cores: int  # of pipeline_all_cores
    speedup_per_core: float  # images/s, pinned core against pinned core
    speedup_per_cpu_s: float  # the same from CPU time
    batch_size: int
    image_size: int
    records: int
    epochs: int
    baseline_source: str  # the sample's folder, or "synthetic 1024x768"
    baseline_pairs: int


def run_pipeline_benchmark(
    data_dir: str | None = None,
    batch_size: int = 32,
    *,
    num_images: int = 2075,
    image_size: int = 128,
    epochs: int = 2,
    sample_dir: str | None = paths.SAMPLE_DIR,
    baseline_images: int = 96,
) -> PipelineReport:
    """Measures training-pipeline images/s per core against the PIL baseline.

    Args:
      data_dir: records to read (its "train" split); None writes `num_images` synthetic
        `image_size` records to a temporary directory (2075: the ISIC 2018 training
        split, so the per-epoch setup cost weighs as it does in training).
      batch_size: global batch size for both sides.
      epochs: timed epochs of our pipeline (after one warm-up epoch).
      sample_dir: originals for the baseline (images/<ID>.jpg, masks/<ID>_segmentation.png);
        when absent, synthetic 1024x768 JPEG/PNG pairs are written instead.
      baseline_images: how many original pairs the baseline loads (timed once, after a
        pass that warms the OS file cache).
    """
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="isic-pipeline-bench-") as tmp:
        if data_dir is None:
            data_dir = os.path.join(tmp, "records")
            tiny_records.write_records(data_dir, {"train": num_images}, size=image_size, shards_per_split=4)
        with open(os.path.join(data_dir, "manifest.json")) as f:
            records = json.load(f)["counts"]["train"]
        pairs, source = _baseline_pairs(sample_dir, baseline_images, tmp)
        ours = {"data_dir": data_dir, "batch_size": batch_size, "epochs": epochs}
        one_core = {cpus[0]}
        one = _in_child("measure_pipeline", dict(ours, augment=True, single_core=True), one_core)
        no_augment = _in_child("measure_pipeline", dict(ours, augment=False, single_core=True), one_core)
        every = _in_child("measure_pipeline", dict(ours, augment=True, single_core=False), None)
        baseline = _in_child(
            "measure_baseline", {"pairs": pairs, "batch_size": batch_size, "image_size": image_size}, one_core
        )
    return PipelineReport(
        pipeline_1core=one,
        pipeline_1core_no_augment=no_augment,
        pipeline_all_cores=every,
        baseline_1core=baseline,
        cores=len(cpus),
        speedup_per_core=one.images_per_s / baseline.images_per_s,
        speedup_per_cpu_s=one.images_per_cpu_s / baseline.images_per_cpu_s,
        batch_size=batch_size,
        image_size=image_size,
        records=records,
        epochs=epochs,
        baseline_source=source,
        baseline_pairs=len(pairs),
    )


def _in_child(function: str, kwargs: dict, cpus: set | None) -> Throughput:
    """`function` of this module measured in a child process with the environment
    isic-train sets, on `cpus` (None: all)."""
    return child.run_child(
        f"benchmarks.pipeline:{function}", kwargs, Throughput, env=child.TUNED_ENV, cpus=cpus
    ).value


def _timed(run) -> Throughput:
    wall, cpu = time.perf_counter(), time.process_time()
    images = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Throughput(
        images=images,
        seconds=wall,
        cpu_seconds=cpu,
        images_per_s=images / wall,
        images_per_cpu_s=images / cpu,
    )


def measure_pipeline(
    data_dir: str, batch_size: int, epochs: int, augment: bool, single_core: bool
) -> Throughput:
    """Runs in the child: `epochs` timed epochs after a warm-up; single_core: 1 TF thread."""
    import tensorflow as tf

    from pipeline import dataset
    from pipeline import records as records_lib
    from pipeline.config import AugmentConfig

    if single_core:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    records = records_lib.Records.open(data_dir)  # once, as the trainer does
    options = AugmentConfig(augment=augment)
    setup = [0.0]  # CPU seconds spent building datasets and their iterators

    def one_epoch(epoch):
        cpu = time.process_time()
        ds = dataset.make_dataset(
            records, "train", batch_size=batch_size, training=True, seed=0, epoch=epoch, augment=options
        )
        iterator = iter(ds)
        setup[0] += time.process_time() - cpu
        return sum(int(images.shape[0]) for images, _ in iterator)

    one_epoch(0)  # warm-up: XLA compilation, OS file cache
    setup[0] = 0.0
    result = _timed(lambda: sum(one_epoch(e) for e in range(1, epochs + 1)))
    return dataclasses.replace(
        result,
        setup_cpu_seconds_per_epoch=setup[0] / epochs,
        steady_images_per_cpu_s=result.images / (result.cpu_seconds - setup[0]),
    )


def measure_baseline(pairs: list, batch_size: int, image_size: int) -> Throughput:
    """Runs in the child: the original script's loader over `pairs` (image, mask paths)."""
    from PIL import Image

    def batches():  # the original script's loader: decode, resize, stack, per batch
        for start in range(0, len(pairs), batch_size):
            images, masks = [], []
            for image_path, mask_path in pairs[start : start + batch_size]:
                with Image.open(image_path) as image:
                    image = image.convert("RGB").resize((image_size, image_size))
                    images.append(np.asarray(image, np.float32) / 255.0)
                with Image.open(mask_path) as mask:
                    mask = mask.convert("L").resize((image_size, image_size), Image.NEAREST)
                    masks.append((np.asarray(mask) > 127).astype(np.float32)[..., None])
            yield np.stack(images), np.stack(masks)

    for image_path, mask_path in pairs:  # warm the OS file cache, as for the records
        for path in (image_path, mask_path):
            with open(path, "rb") as f:
                f.read()
    return _timed(lambda: sum(len(images) for images, _ in batches()))


def _baseline_pairs(sample_dir, limit: int, tmp: str) -> tuple[list, str]:
    """(image, mask) paths for the baseline: the real sample, or synthetic files in tmp."""
    if sample_dir and os.path.isdir(os.path.join(sample_dir, "images")):
        images = sorted(glob.glob(os.path.join(sample_dir, "images", "*.jpg")))[:limit]
        pairs = [
            (p, os.path.join(sample_dir, "masks", os.path.basename(p)[:-4] + "_segmentation.png"))
            for p in images
        ]
        if pairs and all(os.path.isfile(m) for _, m in pairs):
            return pairs, os.path.abspath(sample_dir)
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(tmp, "raw"))
    pairs = []
    for i in range(limit):  # median ISIC 2017 size; smooth content so JPEG size is realistic
        small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((1024, 768), Image.BILINEAR)
        mask = Image.fromarray(((small[..., 0] > 128) * 255).astype(np.uint8)).resize((1024, 768))
        pair = (
            os.path.join(tmp, "raw", f"ISIC_{i:07d}.jpg"),
            os.path.join(tmp, "raw", f"ISIC_{i:07d}_segmentation.png"),
        )
        image.save(pair[0], quality=90)
        mask.save(pair[1])
        pairs.append(pair)
    return pairs, "synthetic 1024x768"
