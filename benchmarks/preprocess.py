"""Benchmark of the TFRecord builder against a naive baseline, measured in the same run.

  python -m benchmarks.preprocess [--data_dir ../shared/isic2017-sample] [--work_dir DIR]

Reports, as JSON:
  - pairs/s of the naive baseline (what the original script did: one process, full PIL
    decode, `Image.open(p).convert('RGB').resize((S, S))` and the same for the mask, no
    writing) and of the builder (discovery, decoding, validation, encoding, writing
    shards, hashing, manifest) with 1 and 2 workers, and the speed-up per worker;
  - peak memory of the builder (it runs in a subprocess): the largest single process
    (getrusage/wait4 ru_maxrss) and the whole process tree (sum of VmRSS, sampled every
    20 ms), for the dataset and for the dataset doubled (symlinks under new IDs);
  - the same speed comparison on "full-size" images: a few sample images enlarged to
    4000 x 3000, the size of the largest ISIC originals.
Timings are ratios measured back to back in the same run, repeated (interleaved) and the
fastest kept; CPU-time ratios are reported too, as they barely depend on other jobs.
Uses the real ISIC sample when present, otherwise synthetic pairs (isic-synth).
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from benchmarks import paths
from preprocessing import pairs as pairs_lib
from preprocessing import synth

DEFAULT_DATA_DIR = paths.SAMPLE_DIR

# Runs one build in a fresh interpreter and prints its wall and CPU time (TensorFlow's
# import comes before the clock starts: it is the same for any builder). CPU time counts
# this process and its reaped workers: on a shared machine it is far steadier than wall
# time, which other jobs stretch.
_BUILD_SNIPPET = """
import json, resource, sys, time
from preprocessing import build
def cpu():
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))
a = json.loads(sys.argv[1])
start, cpu0 = time.perf_counter(), cpu()
m = build.build_records(a["images_dir"], a["masks_dir"], a["output_dir"], image_size=a["image_size"],
                        num_workers=a["num_workers"], overwrite=True, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": cpu() - cpu0,
                  "records": sum(m["counts"].values())}))
"""


def run_preprocess_benchmark(data_dir: str | None, work_dir: str, image_size: int = 128,
                             full_size_pairs: int = 8, repeats: int = 2) -> dict:
    """Runs every measurement described in the module doc; returns them as a dict."""
    os.makedirs(work_dir, exist_ok=True)
    if not data_dir or not os.path.isdir(data_dir):
        data_dir = os.path.join(work_dir, "synth")
        synth.write_dataset(data_dir, 200, seed=0, progress=False)
    images_dir, masks_dir = pairs_lib.dataset_dirs(data_dir)
    pairs = pairs_lib.discover_pairs(images_dir, masks_dir).pairs
    report = {"data_dir": os.path.abspath(data_dir), "pairs": len(pairs), "image_size": image_size,
              "cpus": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 1)}

    # Interleaved repeats; the fastest of each is the one least disturbed by other jobs.
    naive, builds = [], {1: [], 2: []}
    for _ in range(repeats):
        naive.append(_naive_seconds(pairs, image_size))
        for w in builds:
            builds[w].append(_build_in_subprocess(images_dir, masks_dir,
                                                  os.path.join(work_dir, f"out_w{w}"), image_size, w))
    naive_wall = min(t for t, _ in naive)
    naive_cpu = min(c for _, c in naive)
    report["naive_pairs_per_s"] = round(len(pairs) / naive_wall, 1)
    report["naive_pairs_per_cpu_s"] = round(len(pairs) / naive_cpu, 1)
    for w, results in builds.items():
        wall = min(r["seconds"] for r in results)
        cpu = min(r["cpu_seconds"] for r in results)
        report[f"builder_{w}w_pairs_per_s"] = round(len(pairs) / wall, 1)
        report[f"builder_{w}w_pairs_per_cpu_s"] = round(len(pairs) / cpu, 1)
        # Wall-time speed-up divided by the workers, and the same from CPU time (which
        # does not depend on whether the other jobs left both cores free).
        report[f"builder_{w}w_speedup_per_worker"] = round(naive_wall / wall / w, 2)
        report[f"builder_{w}w_cpu_speedup"] = round(naive_cpu / cpu, 2)
        report[f"builder_{w}w_peak_rss_mb"] = max(r["max_rss_mb"] for r in results)
        report[f"builder_{w}w_peak_tree_rss_mb"] = max(r["tree_rss_mb"] for r in results)

    doubled = _doubled_dataset(pairs, os.path.join(work_dir, "doubled"))
    for w in (1, 2):
        result = _build_in_subprocess(*doubled, os.path.join(work_dir, f"out_x2_w{w}"), image_size, w)
        report[f"doubled_{w}w_pairs"] = result["records"]
        report[f"doubled_{w}w_peak_rss_mb"] = result["max_rss_mb"]
        report[f"doubled_{w}w_peak_tree_rss_mb"] = result["tree_rss_mb"]

    big = _full_size_dataset(pairs[:full_size_pairs], os.path.join(work_dir, "full_size"))
    big_pairs = pairs_lib.discover_pairs(*big).pairs
    naive_runs = [_naive_seconds(big_pairs, image_size) for _ in range(repeats)]
    naive_big = (min(t for t, _ in naive_runs), min(c for _, c in naive_runs))
    built_big = [_build_in_subprocess(*big, os.path.join(work_dir, "out_full_size"), image_size, 1)
                 for _ in range(repeats)]
    big_wall = min(r["seconds"] for r in built_big)
    big_cpu = min(r["cpu_seconds"] for r in built_big)
    report["full_size"] = {
        "pairs": len(big_pairs), "size": "4000x3000",
        "naive_pairs_per_s": round(len(big_pairs) / naive_big[0], 2),
        "builder_1w_pairs_per_s": round(len(big_pairs) / big_wall, 2),
        "builder_1w_speedup": round(naive_big[0] / big_wall, 2),
        "builder_1w_cpu_speedup": round(naive_big[1] / big_cpu, 2),
        "builder_1w_peak_rss_mb": max(r["max_rss_mb"] for r in built_big),
    }
    report["load_average_after"] = round(os.getloadavg()[0], 1)
    return report


def _naive_seconds(pairs, size: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the original script's decoding: full decode + default
    resize of image and mask, one process, nothing written."""
    start, cpu = time.perf_counter(), time.process_time()
    for pair in pairs:
        image = np.asarray(Image.open(pair.image_path).convert("RGB").resize((size, size)))
        mask = np.asarray(Image.open(pair.mask_path).resize((size, size)))
        assert image.shape == (size, size, 3) and mask.shape == (size, size)
    return time.perf_counter() - start, time.process_time() - cpu


def _build_in_subprocess(images_dir, masks_dir, output_dir, image_size, num_workers) -> dict:
    """Runs one build in a child interpreter; returns its wall and CPU seconds and peak
    memory (MB)."""
    args = json.dumps({"images_dir": images_dir, "masks_dir": masks_dir, "output_dir": output_dir,
                       "image_size": image_size, "num_workers": num_workers})
    env = dict(os.environ, PYTHONPATH=paths.PROJECT_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", _BUILD_SNIPPET, args], stdout=out,
                                stderr=err, env=env)
        peak = {"kb": 0}
        sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, peak), daemon=True)
        sampler.start()
        # wait4 (not Popen.wait) to get the child's rusage: ru_maxrss is the largest RSS
        # of the child or of any of its (reaped) workers, in KB on Linux.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"build of {images_dir} failed:\n{err.read().decode()[-3000:]}")
        result = json.loads(out.read().decode().strip().splitlines()[-1])
    result["max_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["tree_rss_mb"] = round(peak["kb"] / 1024, 1)
    return result


def _sample_tree_rss(pid: int, peak: dict) -> None:
    """Tracks the peak of the summed VmRSS of `pid` and its descendants until it exits."""
    while os.path.exists(f"/proc/{pid}/status"):
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        # Fields after the ')' that ends the command name: state, ppid.
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        tree, frontier = {pid}, [pid]
        while frontier:
            children = [c for c, p in parents.items() if p in frontier and c not in tree]
            tree.update(children)
            frontier = children
        peak["kb"] = max(peak["kb"], sum(_rss_kb(p) for p in tree))
        time.sleep(0.02)


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _doubled_dataset(pairs, root: str) -> tuple[str, str]:
    """A folder with every pair twice (symlinks under IDs <ID> and <ID>_copy)."""
    images_dir, masks_dir = pairs_lib.dataset_dirs(root)
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    for pair in pairs:
        ext = os.path.splitext(pair.image_file)[1]
        for case_id in (pair.case_id, pair.case_id + "_copy"):
            for src, dst in ((pair.image_path, os.path.join(images_dir, case_id + ext)),
                             (pair.mask_path, os.path.join(masks_dir, case_id + pairs_lib.MASK_SUFFIX))):
                if not os.path.lexists(dst):
                    os.symlink(os.path.abspath(src), dst)
    return images_dir, masks_dir


def _full_size_dataset(pairs, root: str, size=(4000, 3000)) -> tuple[str, str]:
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
                im.resize(size, Image.NEAREST).save(
                    os.path.join(masks_dir, pair.case_id + pairs_lib.MASK_SUFFIX))
    return images_dir, masks_dir


def _main() -> None:
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    data_dir = flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "Dataset with images/ and "
                                   "masks/ (synthetic pairs are generated when it is absent).")
    work_dir = flags.DEFINE_string("work_dir", None, "Scratch folder (default: a temporary one).")
    image_size = flags.DEFINE_integer("image_size", 128, "Record size S.")

    def main(argv):
        del argv
        with tempfile.TemporaryDirectory() as tmp:
            report = run_preprocess_benchmark(data_dir.value, work_dir.value or tmp, image_size.value)
        print(json.dumps(report, indent=1))

    app.run(main)


if __name__ == "__main__":
    _main()
