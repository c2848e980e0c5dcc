"""`isic-launch`: run `isic-train` as N worker processes on this machine (MultiWorkerMirrored).

  isic-launch --num_workers 2 [--port 23456] [--restarts 2] [--grace_seconds 30] -- \\
      --data_dir records/ --model_dir runs/unet --batch_size 32

Everything after `--` is passed to every worker's `python -m launch.commands.train`, with
`--strategy=multi_worker` added. If what follows `--` does not start with a flag it is the
whole worker command instead (for your own scripts), e.g. `-- python my_worker.py --x 1`.

On a machine with GPUs each worker sees only its own share of them (CUDA_VISIBLE_DEVICES,
GPU memory growth on; --gpus_per_worker sets the share; launch/cluster/gpus.py).

Each worker gets TF_CONFIG for 127.0.0.1 (worker 0 is the chief), its output lines are
prefixed with "[wI] ", and when one worker dies the others are stopped (SIGTERM, then
SIGKILL after --grace_seconds) and the launcher exits non-zero. With --restarts K the
group is relaunched up to K times on fresh ports; the trainer resumes from --model_dir's
last checkpoint by itself.

Ctrl-C or SIGTERM to the launcher reaches every worker: they finish the step in flight,
write a checkpoint together and exit; the launcher waits up to --grace_seconds for that
(SIGKILL after it, or at a second Ctrl-C) and exits 130 (SIGINT) or 143 (SIGTERM). The
same command resumes. A worker that exits 143/130 by itself stops the group the same way,
without a restart.

For several machines use your cluster's launcher instead (launch/examples/: SLURM, TFJob).
"""

import os
import sys

from absl import app

import launch as launch_package
from launch import cli
from launch.cluster import process_group
from launch.cluster.config import LaunchConfig


def worker_command(args: list[str]) -> list[str]:
    """The argv each worker runs: isic-train with `args` and --strategy=multi_worker,
    or `args` itself when it is a command rather than flags."""
    if not args:
        raise app.UsageError(
            "give the isic-train flags after `--`, e.g. "
            "isic-launch --num_workers 2 -- --data_dir records --model_dir runs/x"
        )
    if not args[0].startswith("-"):
        return list(args)
    for i, arg in enumerate(args):
        name, equals, value = arg.lstrip("-").partition("=")
        if name == "strategy" and not equals:  # "--strategy X"
            value = args[i + 1] if i + 1 < len(args) else ""
        if name == "strategy" and value != "multi_worker":
            raise app.UsageError(
                f"--strategy {value}: isic-launch runs workers with "
                "--strategy=multi_worker; drop that flag (or use isic-train "
                "directly for one process)"
            )
    return [sys.executable, "-m", "launch.commands.train", *args, "--strategy=multi_worker"]


def main(args, config: LaunchConfig) -> int:
    command = worker_command(args.argv)
    # Workers run `-m launch.commands.train` from the current directory: make the project
    # (the folder holding the `launch` package) importable from there even when it is not
    # installed.
    project = os.path.dirname(os.path.dirname(os.path.abspath(launch_package.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    return process_group.launch(command, config, env=env, handle_signals=True)


def run() -> None:
    """Console-script entry point (isic-launch)."""
    cli.run(__name__, LaunchConfig, main, uses_tensorflow=False, passthrough=True)


if __name__ == "__main__":
    run()
