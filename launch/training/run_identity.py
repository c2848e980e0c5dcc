"""The run's identity: the settings recorded in `checkpoints/run.json` that must not change
within a run, and the check made before a resume writes anything.

What a mismatch means depends on the key: another model shape cannot be restored,
another batch size, epoch length or seed would not continue the same data order, and
another precision is allowed (logged; checkpoints.py restores around the loss scaler).
"""

import json
import os

from absl import logging

from core import files
from core.errors import UserError
from launch.layout import CHECKPOINT_DIR
from launch.layout import RUN_FILE
from launch.training.config import TrainConfig

# Settings that define the model's variables: a mismatch cannot be restored.
SHAPE_KEYS = ("image_size", "encoder", "base_filters", "depth")
# Settings that define the data order: a mismatch would not continue the same run.
ORDER_KEYS = ("batch_size", "steps_per_epoch", "seed")
# Recorded since later versions, so checked only when the earlier run.json has them: the
# schedule's state is part of the optimizer checkpoint (another one fails to restore), and
# what was done to the pixels (manifest["preprocessing"]) must not change within a run.
INPUT_KEYS = ("lr_schedule", "preprocessing")
# The resolved --precision the run started with. Not a mismatch: a resume under another
# precision restores the weights and the optimizer state around the loss scaler
# (`_matching_view`); recorded so that the change is logged (absent before issue 19).
PRECISION_KEY = "precision"
# --ema_decay: whether the checkpoint holds an average, and how it moves (0: none; absent
# in run.json from before the option, which had none).
AVERAGE_KEY = "ema_decay"


class CheckpointMismatchError(UserError, ValueError):
    """The model directory holds a run whose settings differ from the requested ones."""


def run_identity(
    config: TrainConfig,
    image_size: int,
    steps_per_epoch: int,
    preprocessing: dict,
    precision: str,
) -> dict:
    """What run.json records: the SHAPE_KEYS, ORDER_KEYS, INPUT_KEYS, the resolved
    precision (PRECISION_KEY) and --ema_decay (AVERAGE_KEY)."""
    return {
        "image_size": image_size,
        "encoder": config.encoder,
        "base_filters": config.base_filters,
        "depth": config.depth,
        "batch_size": config.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "seed": config.seed,
        "lr_schedule": config.lr_schedule,
        "preprocessing": preprocessing,
        PRECISION_KEY: precision,
        AVERAGE_KEY: config.ema_decay,
    }


def check_run(model_dir: str, run: dict) -> None:
    """Raises CheckpointMismatchError if `model_dir` holds a run with other settings."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, RUN_FILE)
    if not files.exists(path):
        return
    with files.open(path) as f:
        previous = json.load(f)
    previous.setdefault("encoder", "unet")  # run.json from before encoders were recorded
    if previous.get("image_size") != run.get("image_size"):
        size, asked = previous.get("image_size"), run.get("image_size")
        raise CheckpointMismatchError(
            f"{model_dir} holds a model trained on {size}x{size} records, but these records "
            f"are {asked}x{asked}. To resume, pass records built with isic-preprocess "
            f"--image_size {size}; to train at {asked}x{asked}, use a new --model_dir."
        )
    for key in SHAPE_KEYS:
        if previous.get(key) != run.get(key):
            raise CheckpointMismatchError(
                f"{model_dir} holds a model with {key}={previous.get(key)}, but this run asks for "
                f"{key}={run.get(key)}. Use a new --model_dir, or start a new run from those weights "
                "with --warm_start only if the shapes match."
            )
    for key in ORDER_KEYS + INPUT_KEYS:
        if key in INPUT_KEYS and key not in previous:
            continue  # run.json from before the key was recorded
        if previous.get(key) != run.get(key):
            raise CheckpointMismatchError(
                f"{model_dir} was trained with {key}={previous.get(key)}; resuming with "
                f"{key}={run.get(key)} would not continue the same run. Use the original value, "
                "or a new --model_dir (optionally with --warm_start)."
            )
    if previous.get(AVERAGE_KEY, 0.0) != run.get(AVERAGE_KEY, 0.0):
        raise CheckpointMismatchError(
            f"{model_dir} was trained with --ema_decay {previous.get(AVERAGE_KEY, 0.0)}; resuming "
            f"with --ema_decay {run.get(AVERAGE_KEY, 0.0)} would not continue the same average. "
            "Use the original value, or a new --model_dir (optionally with --warm_start)."
        )
    started = previous.get(PRECISION_KEY, run.get(PRECISION_KEY))
    if started != run.get(PRECISION_KEY):
        logging.warning(
            "%s was started under --precision %s; resuming under %s (weights and "
            "optimizer state carry over; a float16 loss scale starts afresh or is "
            "dropped)",
            model_dir,
            started,
            run.get(PRECISION_KEY),
        )


def write_run(model_dir: str, run: dict) -> None:
    """Records the run's identity next to its checkpoints (chief only, atomic)."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, RUN_FILE)
    if files.exists(path):  # check_run has verified it matches: leave it untouched
        return
    files.write_atomic(path, json.dumps(run, indent=1, sort_keys=True))
