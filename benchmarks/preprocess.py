"""Stage 1: the TFRecord builder against a naive baseline, measured in the same run.

Measures:
  - pairs/s of the naive baseline (what the original script did: one process, full PIL
    decode, `Image.open(p).convert('RGB').resize((S, S))` and the same for the mask, no
    writing) and of the builder (discovery, decoding, validation, encoding, writing
    shards, hashing, manifest) with 1 and 2 workers, and the speed-up per worker;
  - peak memory of the builder (it runs in a benchmark child): the largest single process
    (wait4's ru_maxrss) and the whole process tree (summed RSS, sampled, fork windows
    excluded), for the dataset and for the dataset doubled (symlinks under new IDs);
  - the same speed comparison on "full-size" images: a few sample images enlarged to
    4000 x 3000, the size of the largest ISIC originals;
  - where the builder's time goes, phase by phase (benchmarks/build_phases.py).
Timings are ratios measured back to back in the same run, repeated (interleaved) and the
fastest kept; CPU-time ratios are reported too, as they barely depend on other jobs.
Uses the real ISIC sample when present, otherwise synthetic pairs (isic-synth).
Run through `isic-bench --stages 1`.
"""

import dataclasses
import os
import resource
import time

from PIL import Image

from benchmarks import build_phases
from benchmarks import child
from core import names
from preprocessing import pairs as pairs_lib
from preprocessing import synth

FULL_SIZE = (4000, 3000)


@dataclasses.dataclass(frozen=True)
class BuildTiming:
    """One build in a child: wall and CPU seconds (the child and its reaped workers)."""

    seconds: float
    cpu_seconds: float
    records: int
    max_rss_mb: float | None = None  # set by the parent from the child's rusage
    tree_rss_mb: float | None = None


@dataclasses.dataclass(frozen=True)
class Builder:
    """The builder with `workers` workers against the naive loop, fastest of the repeats."""

    workers: int
    pairs_per_s: float
    pairs_per_cpu_s: float
    speedup_per_worker: float  # wall-time speed-up divided by the workers
    cpu_speedup: float  # the same from CPU time: independent of free cores
    peak_rss_mb: float
    peak_tree_rss_mb: float


@dataclasses.dataclass(frozen=True)
class Doubled:
    """Peak memory of a build of the dataset doubled."""

    workers: int
    pairs: int
    peak_rss_mb: float
    peak_tree_rss_mb: float


@dataclasses.dataclass(frozen=True)
class FullSize:
    """Naive loop and 1-worker builder on the sample enlarged to FULL_SIZE."""

    pairs: int
    size: str
    naive_pairs_per_s: float
    pairs_per_s: float
    speedup: float
    cpu_speedup: float
    peak_rss_mb: float
    # The floor: only the decoding that cannot be skipped (JPEG at the builder's draft
    # scale, the whole PNG mask: its rows are filtered and deflated one after another),
    # in this process, nothing else. naive / floor is the best possible speed-up.
    floor_pairs_per_s: float = 0.0
    best_possible_speedup: float = 0.0


@dataclasses.dataclass(frozen=True)
class BuildReport:
    """Everything stage 1 measured."""

    data_dir: str
    pairs: int
    image_size: int
    cpus: int
    naive_pairs_per_s: float
    naive_pairs_per_cpu_s: float
    one_worker: Builder
    two_workers: Builder
    doubled_one_worker: Doubled
    doubled_two_workers: Doubled
    full_size: FullSize
    phases: build_phases.Phases
    load_average_before: float
    load_average_after: float


def run_preprocess_benchmark(
    data_dir: str | None, work_dir: str, image_size: int = 128, full_size_pairs: int = 8, repeats: int = 2
) -> BuildReport:
    """Runs every measurement described in the module doc."""
    os.makedirs(work_dir, exist_ok=True)
    if not data_dir or not os.path.isdir(data_dir):
        data_dir = os.path.join(work_dir, "synth")
        synth.write_dataset(data_dir, 200, seed=0, progress=False)
    images_dir, masks_dir = pairs_lib.dataset_dirs(data_dir)
    pairs = pairs_lib.discover_pairs(images_dir, masks_dir).pairs
    load_before = round(os.getloadavg()[0], 1)
    # Interleaved repeats; the fastest of each is the one least disturbed by other jobs.
    naive, builds = [], {1: [], 2: []}
    for _ in range(repeats):
        naive.append(_naive_seconds(pairs, image_size))
        for w, runs in builds.items():
            runs.append(_build(images_dir, masks_dir, os.path.join(work_dir, f"out_w{w}"), image_size, w))
    naive_wall, naive_cpu = min(t for t, _ in naive), min(c for _, c in naive)
    one, two = (_builder(w, builds[w], len(pairs), naive_wall, naive_cpu) for w in (1, 2))
    doubled = _doubled_dataset(pairs, os.path.join(work_dir, "doubled"))
    doubled_one, doubled_two = (
        _doubled(w, _build(*doubled, os.path.join(work_dir, f"out_x2_w{w}"), image_size, w)) for w in (1, 2)
    )
    big = _full_size_dataset(pairs[:full_size_pairs], os.path.join(work_dir, "full_size"))
    return BuildReport(
        data_dir=os.path.abspath(data_dir),
        pairs=len(pairs),
        image_size=image_size,
        cpus=os.cpu_count(),
        naive_pairs_per_s=round(len(pairs) / naive_wall, 1),
        naive_pairs_per_cpu_s=round(len(pairs) / naive_cpu, 1),
        one_worker=one,
        two_workers=two,
        doubled_one_worker=doubled_one,
        doubled_two_workers=doubled_two,
        full_size=_full_size(big, os.path.join(work_dir, "out_full_size"), image_size, repeats),
        phases=build_phases.measure_phases(pairs, image_size, repeats),
        load_average_before=load_before,
        load_average_after=round(os.getloadavg()[0], 1),
    )


def _builder(
    workers: int, runs: list[BuildTiming], pairs: int, naive_wall: float, naive_cpu: float
) -> Builder:
    wall, cpu = min(r.seconds for r in runs), min(r.cpu_seconds for r in runs)
    return Builder(
        workers=workers,
        pairs_per_s=round(pairs / wall, 1),
        pairs_per_cpu_s=round(pairs / cpu, 1),
        speedup_per_worker=round(naive_wall / wall / workers, 2),
        cpu_speedup=round(naive_cpu / cpu, 2),
        peak_rss_mb=max(r.max_rss_mb for r in runs),
        peak_tree_rss_mb=max(r.tree_rss_mb for r in runs),
    )


def _doubled(workers: int, run: BuildTiming) -> Doubled:
    return Doubled(
        workers=workers, pairs=run.records, peak_rss_mb=run.max_rss_mb, peak_tree_rss_mb=run.tree_rss_mb
    )


def _full_size(dirs: tuple[str, str], output_dir: str, image_size: int, repeats: int) -> FullSize:
    """Naive loop and 1-worker builds on the enlarged pairs, fastest of `repeats` each."""
    big_pairs = pairs_lib.discover_pairs(*dirs).pairs
    naive = [_naive_seconds(big_pairs, image_size) for _ in range(repeats)]
    naive_wall, naive_cpu = min(t for t, _ in naive), min(c for _, c in naive)
    built = [_build(*dirs, output_dir, image_size, 1) for _ in range(repeats)]
    wall, cpu = min(r.seconds for r in built), min(r.cpu_seconds for r in built)
    floor = min(_floor_seconds(big_pairs, image_size) for _ in range(repeats))
    return FullSize(
        pairs=len(big_pairs),
        size=f"{FULL_SIZE[0]}x{FULL_SIZE[1]}",
        naive_pairs_per_s=round(len(big_pairs) / naive_wall, 2),
        pairs_per_s=round(len(big_pairs) / wall, 2),
        speedup=round(naive_wall / wall, 2),
        cpu_speedup=round(naive_cpu / cpu, 2),
        peak_rss_mb=max(r.max_rss_mb for r in built),
        floor_pairs_per_s=round(len(big_pairs) / floor, 2),
        best_possible_speedup=round(naive_wall / floor, 2),
    )


def _floor_seconds(pairs, size: int) -> float:
    """Wall seconds of decoding alone, as the builder decodes (see FullSize)."""
    start = time.perf_counter()
    for pair in pairs:
        build_phases.decode_jpeg_draft(pair.image_path, size)
        build_phases.decode_png(pair.mask_path)
    return time.perf_counter() - start


def _naive_seconds(pairs, size: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the original script's decoding: full decode + default
    resize of image and mask, one process, nothing written."""
    start, cpu = time.perf_counter(), time.process_time()
    for pair in pairs:
        build_phases.naive_pair(pair, size)
    return time.perf_counter() - start, time.process_time() - cpu


def _build(
    images_dir: str, masks_dir: str, output_dir: str, image_size: int, num_workers: int
) -> BuildTiming:
    """One build in a benchmark child, with its peak memory (largest process, whole tree)."""
    run = child.run_child(
        "benchmarks.preprocess:time_build",
        {
            "images_dir": images_dir,
            "masks_dir": masks_dir,
            "output_dir": output_dir,
            "image_size": image_size,
            "num_workers": num_workers,
        },
        BuildTiming,
        env=child.TUNED_ENV,
        watch_tree=True,
    )  # the environment isic-preprocess sets
    return dataclasses.replace(run.value, max_rss_mb=run.max_rss_mb, tree_rss_mb=run.tree_rss_mb)


def time_build(
    images_dir: str, masks_dir: str, output_dir: str, image_size: int, num_workers: int
) -> BuildTiming:
    """Runs in the child: one build, timed after the builder's imports. CPU time counts
    this process and its reaped workers: on a shared machine it is far steadier than wall
    time, which other jobs stretch."""
    from preprocessing import build
    from preprocessing.config import BuildConfig

    def cpu() -> float:
        return sum(
            r.ru_utime + r.ru_stime
            for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        )

    start, cpu_start = time.perf_counter(), cpu()
    config = BuildConfig(image_size=image_size, num_workers=num_workers, overwrite=True)
    manifest = build.build_records([(images_dir, masks_dir)], output_dir, config, progress=False)
    return BuildTiming(
        seconds=time.perf_counter() - start,
        cpu_seconds=cpu() - cpu_start,
        records=sum(manifest["counts"].values()),
    )


def _doubled_dataset(pairs, root: str) -> tuple[str, str]:
    """A folder with every pair twice (symlinks under IDs <ID> and <ID>_copy)."""
    images_dir, masks_dir = pairs_lib.dataset_dirs(root)
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    for pair in pairs:
        ext = os.path.splitext(pair.image_file)[1]
        for case_id in (pair.case_id, pair.case_id + "_copy"):
            for src, dst in (
                (pair.image_path, os.path.join(images_dir, case_id + ext)),
                (pair.mask_path, os.path.join(masks_dir, case_id + names.MASK_SUFFIX)),
            ):
                if not os.path.lexists(dst):
                    os.symlink(os.path.abspath(src), dst)
    return images_dir, masks_dir


def _full_size_dataset(pairs, root: str, size=FULL_SIZE) -> tuple[str, str]:
    """Copies of the pairs enlarged to `size` (JPEG quality 90, masks nearest-neighbour)."""
    images_dir, masks_dir = pairs_lib.dataset_dirs(root)
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    for pair in pairs:
        image_path = os.path.join(images_dir, pair.case_id + ".jpg")
        if not os.path.exists(image_path):
            with Image.open(pair.image_path) as im:
                im.convert("RGB").resize(size, Image.BICUBIC).save(image_path, quality=90)
            with Image.open(pair.mask_path) as im:
                im.resize(size, Image.NEAREST).save(os.path.join(masks_dir, pair.case_id + names.MASK_SUFFIX))
    return images_dir, masks_dir
