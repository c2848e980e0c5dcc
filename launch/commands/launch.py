"""`isic-launch`: run `isic-train` as N worker processes on this machine (MultiWorkerMirrored).

  isic-launch --num_workers 2 [--port 23456] [--restarts 2] [--grace_seconds 10] -- \\
      --data_dir records/ --model_dir runs/unet --batch_size 32

Everything after `--` is passed to every worker's `python -m launch.commands.train`, with
`--strategy=multi_worker` added. If what follows `--` does not start with a flag it is the
whole worker command instead (for your own scripts), e.g. `-- python my_worker.py --x 1`.

Each worker gets TF_CONFIG for 127.0.0.1 (worker 0 is the chief), its output lines are
prefixed with "[wI] ", Ctrl-C/SIGTERM reach every worker, and when one worker dies the
others are stopped (SIGTERM, then SIGKILL after --grace_seconds) and the launcher exits
non-zero. With --restarts K the group is relaunched up to K times on fresh ports; the
trainer resumes from --model_dir's last checkpoint by itself.

For several machines use your cluster's launcher instead (launch/examples/: SLURM, TFJob).
"""

import os
import sys

from absl import app
from absl import flags

from launch.cluster import process_group
from launch import console_tmp as console

FLAGS = flags.FLAGS

flags.DEFINE_integer("num_workers", 2, "Worker processes to start on this machine.")
flags.DEFINE_integer("port", None, "First port to try for the workers' gRPC servers (the next "
                     "free ones above it are used). Default: ports picked by the kernel.")
flags.DEFINE_integer("restarts", 0, "Relaunch the whole group up to this many times after a "
                     "worker failed; training resumes from --model_dir's last checkpoint.")
flags.DEFINE_float("grace_seconds", 10.0, "Seconds the other workers get to exit after SIGTERM "
                   "(when a worker died, or on Ctrl-C) before they are SIGKILLed. TensorFlow's "
                   "multi-worker runtime ignores SIGTERM, so this bounds how long they outlive "
                   "a dead peer.")
flags.DEFINE_integer("gpus_per_worker", 0, "If > 0, worker i sees only GPUs i*G..(i+1)*G-1 "
                     "(CUDA_VISIBLE_DEVICES). Default: leave CUDA_VISIBLE_DEVICES alone. One "
                     "machine with several GPUs needs no launcher: isic-train mirrors over them.")


def worker_command(args: list[str]) -> list[str]:
    """The argv each worker runs: isic-train with `args` and --strategy=multi_worker,
    or `args` itself when it is a command rather than flags."""
    if not args:
        raise app.UsageError("give the isic-train flags after `--`, e.g. "
                             "isic-launch --num_workers 2 -- --data_dir records --model_dir runs/x")
    if not args[0].startswith("-"):
        return list(args)
    for i, arg in enumerate(args):
        name, equals, value = arg.lstrip("-").partition("=")
        if name == "strategy" and not equals:  # "--strategy X"
            value = args[i + 1] if i + 1 < len(args) else ""
        if name == "strategy" and value != "multi_worker":
            raise app.UsageError(f"--strategy {value}: isic-launch runs workers with "
                                 "--strategy=multi_worker; drop that flag (or use isic-train "
                                 "directly for one process)")
    return [sys.executable, "-m", "launch.commands.train", *args, "--strategy=multi_worker"]


def main(argv):
    if FLAGS.num_workers < 1:
        raise app.UsageError(f"--num_workers must be >= 1, got {FLAGS.num_workers}")
    if FLAGS.restarts < 0 or FLAGS.grace_seconds < 0 or FLAGS.gpus_per_worker < 0:
        raise app.UsageError("--restarts, --grace_seconds and --gpus_per_worker must be >= 0")
    if FLAGS.port is not None and not 1 <= FLAGS.port <= 65535:
        raise app.UsageError(f"--port must be in 1..65535, got {FLAGS.port}")
    command = worker_command(argv[1:])
    # Workers run `-m launch.commands.train` from the current directory: make the project importable
    # from there even when it is not installed.
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    try:
        return process_group.launch(
            command, FLAGS.num_workers, port=FLAGS.port, restarts=FLAGS.restarts,
            grace_s=FLAGS.grace_seconds, gpus_per_worker=FLAGS.gpus_per_worker, env=env,
            handle_signals=True)
    except RuntimeError as e:  # no free ports, a worker command that cannot start
        print(f"isic-launch: error: {e}", file=sys.stderr)
        return 1


def run():
    console.run(main, __name__)


if __name__ == "__main__":
    run()
