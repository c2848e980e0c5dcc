"""Running a selection of isic-bench's stages and saving what they measured.

`run_stages(stages, output_dir, settings, data_dir)` runs each stage's runner (see
stages.py), writes results.json after every stage (so an interrupted run keeps what it
measured) and returns {"command", "machine", "stages", "seconds", "rows"}.
`stage_settings(quick, ...)` gives each runner's keyword arguments.
"""

import json
import os
import sys
import tempfile
import time

from benchmarks import machine
from benchmarks import stages as stages_lib

RESULTS_FILE = "results.json"


def stage_settings(quick: bool, unet_filters=(16, 32, 64), inference_filters: int = 32) -> dict:
    """Keyword arguments of each stage's runner: the full run, or tiny ones (--quick)."""
    if quick:
        return {
            1: {"num_pairs": 16, "full_size_pairs": 1, "repeats": 1},
            2: {"num_images": 64, "epochs": 1, "baseline_images": 16, "batch_size": 16},
            3: {"quick": True},
            4: {"filters": (4,), "batch_size": 4, "image_size": 32, "fit_tuned_filters": (),
                "peak_size": 512},
            5: {"inference": {"base_filters": 4, "image_size": 32, "batch_size": 4},
                "startup": {"base_filters": 4, "batch_size": 4, "image_size": 32, "num_pairs": 12}},
        }
    # Sizes chosen so that the whole run takes 9-10 minutes on 2 idle cores: stage 4 alone
    # needs ~5 (a 64-filter step is ~35 s, and each loop needs a warm-up). Stage 1 at 120
    # pairs saved 20 s but let the workers' start-up push 2 workers to 1.75x per worker.
    return {1: {"num_pairs": 160}, 2: {"num_images": 2075}, 3: {"quick": False},
            4: {"filters": tuple(unet_filters)},
            5: {"inference": {"base_filters": inference_filters}, "startup": {}}}


def run_stages(stages: list[int], output_dir: str, settings: dict, data_dir: str | None,
               argv: list[str] | None = None) -> dict:
    """Runs the stages in order and writes output_dir/results.json; returns the results."""
    os.makedirs(output_dir, exist_ok=True)
    results = {"command": " ".join(argv or sys.argv), "machine": machine.describe(), "stages": {},
               "seconds": {}, "rows": []}
    path = os.path.join(output_dir, RESULTS_FILE)
    with tempfile.TemporaryDirectory(prefix="isic-bench-") as tmp:
        for stage in stages:
            start = time.perf_counter()
            raw = stages_lib.RUNNERS[stage](settings[stage], data_dir, os.path.join(tmp, f"stage{stage}"))
            results["seconds"][str(stage)] = round(time.perf_counter() - start, 1)
            results["stages"][str(stage)] = raw
            write_results(path, results)  # the raw figures first: they survive a tabulation error
            results["rows"] += stages_lib.ROWS[stage](raw)
            write_results(path, results)
            print(f"stage {stage} done in {results['seconds'][str(stage)]} s", flush=True)
    return results


def write_results(path: str, results: dict) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
