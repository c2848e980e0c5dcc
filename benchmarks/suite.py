"""Running a selection of isic-bench's stages and saving what they measured.

`run_stages(config, output_dir, data_dir)` runs each selected stage (see stages.py),
writes results.json after every stage (so an interrupted run keeps what it measured) and
returns the `results.Report`: the command, the config, the machine, each stage's report
and run time, and the table rows.
"""

import os
import sys
import tempfile
import time

from benchmarks import machine
from benchmarks import results
from benchmarks import stages as stages_lib
from benchmarks.config import BenchConfig


def run_stages(
    config: BenchConfig,
    output_dir: str,
    data_dir: str | None,
    argv: list[str] | None = None,
    stages: dict | None = None,
) -> results.Report:
    """Runs config's stages in order and writes output_dir/results.json; returns the report.

    Args:
      data_dir: original images/ and masks/ for stages 1 and 2; None: synthetic pairs.
      argv: the command line to record (default: sys.argv).
      stages: {number: stages.Stage} to run them from (default: stages.STAGES).
    """
    stages = stages_lib.STAGES if stages is None else stages
    os.makedirs(output_dir, exist_ok=True)
    report = results.Report(command=" ".join(argv or sys.argv), config=config, machine=machine.describe())
    path = os.path.join(output_dir, results.RESULTS_FILE)
    with tempfile.TemporaryDirectory(prefix="isic-bench-") as tmp:
        for number in config.stage_numbers:
            stage = stages[number]
            start = time.perf_counter()
            raw = stage.run(config, data_dir, os.path.join(tmp, f"stage{number}"))
            report.seconds[str(number)] = round(time.perf_counter() - start, 1)
            report.stages[str(number)] = raw
            # The raw figures first: they survive an error in making the rows.
            results.write_results(path, report)
            report.rows.extend(stage.rows(raw))
            results.write_results(path, report)
            print(f"stage {number} ({stage.name}) done in {report.seconds[str(number)]} s", flush=True)
    return report
