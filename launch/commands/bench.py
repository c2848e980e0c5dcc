"""`isic-bench`: every stage of the project against its baseline, measured in the same run.

  isic-bench --output_dir bench_out            # all stages, < 10 min on 2 cores
  isic-bench --output_dir /tmp/b --quick       # tiny settings: checks that every stage runs
  isic-bench --output_dir bench_out --stages 3,4

Stages: 1 building records, 2 input pipeline, 3 training-loop overhead, 4 U-Net training
step, 5 inference and time to the first training step. Prints one table (stage,
measure, ours, baseline, gain, target, pass) and writes results.json (every raw
figure, the rows, the machine) into --output_dir. docs/performance.md explains each one.
"""

import os
import sys
import time

from absl import app
from absl import flags

from benchmarks import paths
from benchmarks import stages as stages_lib
from benchmarks import suite
from launch import console_tmp as console

FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", None, "Where results.json goes (created if needed).")
flags.DEFINE_bool("quick", False, "Tiny settings (a few minutes): checks that every stage "
                  "runs; the figures mean little.")
flags.DEFINE_list("stages", ["1", "2", "3", "4", "5"], "Stages to run, e.g. 3,4.")
flags.DEFINE_string("data_dir", paths.SAMPLE_DIR, "Original ISIC images/ and masks/ for stages 1 "
                    "and 2 (synthetic pairs are used when it does not exist).")
flags.DEFINE_list("unet_filters", ["16", "32", "64"], "U-Net base filters of stage 4.")
flags.DEFINE_integer("inference_filters", 32, "U-Net base filters of the inference measurement.")


def _parse_ints(name: str, values: list[str], allowed=None) -> list[int]:
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be a comma-separated list of integers, got "
                             f"{','.join(values)}") from None
    if not numbers or (allowed and not set(numbers) <= set(allowed)) or min(numbers) < 1:
        raise app.UsageError(f"--{name} got {','.join(values)}; expected "
                             f"{'values from ' + str(sorted(allowed)) if allowed else 'positive integers'}")
    return numbers


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required (results.json is written there)")
    stages = sorted(set(_parse_ints("stages", FLAGS.stages, stages_lib.RUNNERS)))
    filters = _parse_ints("unet_filters", FLAGS.unet_filters)
    data_dir = FLAGS.data_dir if FLAGS.data_dir and os.path.isdir(FLAGS.data_dir) else None
    if data_dir is None:
        print(f"--data_dir {FLAGS.data_dir} does not exist: stages 1 and 2 use synthetic pairs")
    start = time.perf_counter()
    settings = suite.stage_settings(FLAGS.quick, filters, FLAGS.inference_filters)
    results = suite.run_stages(stages, FLAGS.output_dir, settings, data_dir,
                               argv=["isic-bench"] + sys.argv[1:])
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    path = os.path.join(FLAGS.output_dir, suite.RESULTS_FILE)
    suite.write_results(path, results)
    print()
    print(stages_lib.format_table(results["rows"]))
    print(f"\n{results['machine']['cpu']}, {results['machine']['cores']} cores, load average at "
          f"start {results['machine']['load_average_at_start'][0]}; {results['total_seconds']:.0f} s; "
          f"{path}")
    return 0


def run():
    console.run(main, __name__)


if __name__ == "__main__":
    run()
