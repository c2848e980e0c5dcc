"""`isic-bench`: every stage of the project against its baseline, measured in the same run.

  isic-bench --output_dir bench_out            # all stages (stage 4 alone ~21 min on 2 shared cores)
  isic-bench --output_dir /tmp/b --quick       # tiny settings: checks that every stage runs
  isic-bench --output_dir bench_out --stages 3,4
  isic-bench --output_dir gpu_check --stages gpu   # before a long GPU run (make gpu-check)

Stages: 1 building records, 2 input pipeline, 3 training-loop overhead, 4 U-Net training
step, 5 inference and time to the first training step, 6 inference latency of the
exported formats (Keras, SavedModel, ONNX Runtime, LiteRT). Prints the machine (CPU model,
AVX-512, AMX), then one table (stage, measure, ours, baseline, gain, target, pass) and
writes results.json (every raw figure, the rows, the config, the machine) into
--output_dir. docs/performance.md explains each one.

`--stages gpu` runs the GPU acceptance check instead (benchmarks/gpu.py; README, "Before a
long GPU run"): it writes gpu_check.json and exits 1 when the check fails; on a machine
without a GPU it says so and exits 0.

The one command that does not live in launch/commands/: benchmarks measure launch's
training, inference and export, so they are the layer above launch (tests/test_layers.py),
and the command that runs them sits with them (setup.py: `isic-bench=benchmarks.bench:run`).
"""

import os
import sys
import time

from benchmarks import paths
from benchmarks.config import BenchConfig
from launch import cli

PATHS = {
    "output_dir": "Where results.json goes (created if needed).",
    "data_dir": f"Original ISIC images/ and masks/ for stages 1 and 2 (default: {paths.SAMPLE_DIR}; "
    "synthetic pairs are used when it does not exist).",
}


def main(args, config: BenchConfig) -> int:
    if config.gpu_check:
        from benchmarks import gpu

        return gpu.main(args.output_dir, config.gpu_scaling_floor)
    from benchmarks import machine  # here, not at the top: --help stays fast
    from benchmarks import results
    from benchmarks import suite

    data_dir = args.data_dir or paths.SAMPLE_DIR
    if not os.path.isdir(data_dir):
        print(f"--data_dir {data_dir} does not exist: stages 1 and 2 use synthetic pairs")
        data_dir = None
    print(machine.describe().summary(), flush=True)
    start = time.perf_counter()
    report = suite.run_stages(config, args.output_dir, data_dir, argv=["isic-bench"] + sys.argv[1:])
    report.total_seconds = round(time.perf_counter() - start, 1)
    path = os.path.join(args.output_dir, results.RESULTS_FILE)
    results.write_results(path, report)
    print()
    print(results.format_table(report.rows))
    print(
        f"\n{report.machine.summary()}; load average at start "
        f"{report.machine.load_average_at_start[0]}; {report.total_seconds:.0f} s; {path}"
    )
    return 0


def run() -> None:
    """Console-script entry point (isic-bench)."""
    cli.run(__name__, BenchConfig, main, paths=PATHS, required=("output_dir",))


if __name__ == "__main__":
    run()
