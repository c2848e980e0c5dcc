"""`isic-train`: train the U-Net on TFRecords, on one device, all local GPUs or a cluster.

  isic-train --data_dir records/ --model_dir runs/unet [--flagfile launch/configs/X.flags]

Running the same command again resumes from the model directory's last checkpoint. The
options are launch/training/config.py's TrainConfig; each run writes them to
<model_dir>/config.json.

Exit status: 0 done; 1 a problem the message explains (bad records, a model directory in
use by another run, an output that cannot be written, ...); 143 (SIGTERM) or 130 (SIGINT):
stopped on that signal after checkpointing the step in flight, and the same command
resumes (launch/training/preemption.py, docs/scaling.md); 142: this worker stalled (its
--stall_minutes watchdog) or lost a peer, so the group must restart, and the same command
resumes from the last checkpoint (core/watchdog.py).
"""

import sys

from core import watchdog
from launch import cli
from launch.training.config import TrainConfig

PATHS = {
    "data_dir": "TFRecord dataset directory (with manifest.json) from isic-preprocess.",
    "model_dir": "Where checkpoints, logs, plots and models go. An existing model directory "
    "is resumed from its last checkpoint.",
}


def main(args, config: TrainConfig) -> int:
    from launch.training import preemption  # after cli set the environment TensorFlow reads
    from launch.training import trainer

    try:
        result = trainer.train(args.data_dir, args.model_dir, config)
    except (preemption.Stopped, watchdog.RestartGroup) as stopped:
        print(f"isic-train: {stopped}", file=sys.stderr)
        return stopped.exit_status
    if result.get("chief") and "epoch" in result:
        dice = f"Validation Dice {result['val_dice']:.4f}" if "val_dice" in result else "No validation split"
        print(f"{dice} after epoch {result['epoch']}; model, plots and logs in {args.model_dir}")
    print(f"weights sha256 {result['weights_sha256']}")
    return 0


def run() -> None:
    """Console-script entry point (isic-train)."""
    cli.run(__name__, TrainConfig, main, paths=PATHS, required=("data_dir", "model_dir"), slurm_task=True)


if __name__ == "__main__":
    run()
