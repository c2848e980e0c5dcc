"""Checkpoints of a training run: save (chief only), restore, the run's identity, warm start.

A model directory holds `checkpoints/ckpt-N.*` (model, optimizer with its loss scale, and
the global step) and `checkpoints/run.json`, the settings that must not change within a
run (model shape, batch size, steps per epoch, seed). Resume is defined by the model
directory: if it has a checkpoint, training continues from it; the epoch and the position
inside the epoch follow from the step. Warm starting (weights only, from another run) is
a separate, explicit option.

Under MultiWorkerMirroredStrategy every worker must call `save` (saving may run
collectives), so non-chief workers save into a private temporary directory that they
delete afterwards: only the chief's files appear in the model directory.
"""

import glob
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from launch.training import faults
from launch.training.config import TrainConfig
from preprocessing import files
from preprocessing.options import UserError

CHECKPOINT_DIR = "checkpoints"
RUN_FILE = "run.json"
# Settings that define the model's variables: a mismatch cannot be restored.
SHAPE_KEYS = ("image_size", "encoder", "base_filters", "depth")
# Settings that define the data order: a mismatch would not continue the same run.
ORDER_KEYS = ("batch_size", "steps_per_epoch", "seed")
# Recorded since later versions, so checked only when the earlier run.json has them: the
# schedule's state is part of the optimizer checkpoint (another one fails to restore), and
# what was done to the pixels (manifest["preprocessing"]) must not change within a run.
INPUT_KEYS = ("lr_schedule", "preprocessing")


class CheckpointMismatchError(UserError, ValueError):
    """The model directory holds a run whose settings differ from the requested ones."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """--warm_start names no file or model directory with a checkpoint."""


def run_identity(config: TrainConfig, image_size: int, depth: int, steps_per_epoch: int,
                 preprocessing: dict) -> dict:
    """What run.json records: the SHAPE_KEYS, ORDER_KEYS and the records' preprocessing."""
    return {"image_size": image_size, "encoder": config.encoder,
            "base_filters": config.base_filters, "depth": depth,
            "batch_size": config.batch_size, "steps_per_epoch": steps_per_epoch,
            "seed": config.seed, "lr_schedule": config.lr_schedule,
            "preprocessing": preprocessing}


def check_run(model_dir: str, run: dict) -> None:
    """Raises CheckpointMismatchError if `model_dir` holds a run with other settings."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, RUN_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    previous.setdefault("encoder", "unet")  # run.json from before encoders were recorded
    if previous.get("image_size") != run.get("image_size"):
        size, asked = previous.get("image_size"), run.get("image_size")
        raise CheckpointMismatchError(
            f"{model_dir} holds a model trained on {size}x{size} records, but these records "
            f"are {asked}x{asked}. To resume, pass records built with isic-preprocess "
            f"--image_size {size}; to train at {asked}x{asked}, use a new --model_dir.")
    for key in SHAPE_KEYS:
        if previous.get(key) != run.get(key):
            raise CheckpointMismatchError(
                f"{model_dir} holds a model with {key}={previous.get(key)}, but this run asks for "
                f"{key}={run.get(key)}. Use a new --model_dir, or start a new run from those weights "
                "with --warm_start only if the shapes match.")
    for key in ORDER_KEYS + INPUT_KEYS:
        if key in INPUT_KEYS and key not in previous:
            continue  # run.json from before the key was recorded
        if previous.get(key) != run.get(key):
            raise CheckpointMismatchError(
                f"{model_dir} was trained with {key}={previous.get(key)}; resuming with "
                f"{key}={run.get(key)} would not continue the same run. Use the original value, "
                "or a new --model_dir (optionally with --warm_start).")


def write_run(model_dir: str, run: dict) -> None:
    """Records the run's identity next to its checkpoints (chief only, atomic)."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, RUN_FILE)
    if os.path.exists(path):  # check_run has verified it matches: leave it untouched
        return
    files.write_atomic(path, json.dumps(run, indent=1, sort_keys=True))


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str) -> str | None:
    """Restores the newest checkpoint of `model_dir` (all workers read the chief's files).

    Returns its path, or None when the directory has none (a fresh run).
    """
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    if latest is None:
        return None
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info("restored %s", latest)
    return latest


class Saver:
    """Saves `checkpoint` on every worker, because saving may run collectives.

    The chief writes `model_dir/checkpoints/ckpt-<step>` and keeps the newest
    `max_to_keep`; other workers write into a temporary directory deleted right away.
    `last` is the newest checkpoint of the run (the restored one until the first save; on
    other workers the chief's file of the same step) and
    `last_step` its step (None for a new run before its first save). A save that cannot be written
    (full or read-only disk) raises faults.OutputError; the previous checkpoints stay
    intact and `checkpoints/checkpoint` keeps naming `last`.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, chief: bool,
                 last: str | None = None, max_to_keep: int = 3):
        self._checkpoint = checkpoint
        self._directory = os.path.join(model_dir, CHECKPOINT_DIR)  # the chief's
        self._manager = (tf.train.CheckpointManager(
            checkpoint, os.path.join(model_dir, CHECKPOINT_DIR), max_to_keep=max_to_keep,
            checkpoint_name="ckpt") if chief else None)
        self.last = last
        self.last_step = int(last.rsplit("-", 1)[1]) if last else None

    def save(self, step: int) -> None:
        """Writes the checkpoint of global step `step`."""
        if self._manager is not None:
            target = os.path.join(self._manager.directory, f"ckpt-{step}")
            kept = (f"The previous checkpoint {self.last} is intact" if self.last
                    else "No earlier checkpoint exists")
            try:
                with faults.writing("checkpoint", target, kept=kept):
                    self.last = self._manager.save(checkpoint_number=step)
            except faults.OutputError:
                # TensorFlow leaves its half-written ckpt-<step>_temp folder: free its space.
                for leftover in glob.glob(glob.escape(target) + "_temp*"):
                    shutil.rmtree(leftover, ignore_errors=True)
                raise
            self.last_step = step
            return
        tmp = tempfile.mkdtemp(prefix="isic-ckpt-")
        try:
            with faults.writing("temporary checkpoint (a worker's share of the save)", tmp):
                self._checkpoint.save(os.path.join(tmp, "ckpt"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.last, self.last_step = os.path.join(self._directory, f"ckpt-{step}"), step


def warm_start(model: keras.Model, source: str) -> None:
    """Loads weights only from a `.keras` file or another run's model directory."""
    if os.path.isdir(source):
        latest = tf.train.latest_checkpoint(os.path.join(source, CHECKPOINT_DIR))
        if latest is None:
            hint = (" (it is a TensorFlow SavedModel, which holds no training state: pass the "
                    "model directory above it, or its ISIC-UNet.keras)"
                    if os.path.isfile(os.path.join(source, "saved_model.pb")) else "")
            raise MissingCheckpointError(
                f"--warm_start {source}: no checkpoints/ckpt-* in that directory{hint}")
        tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
        logging.info("warm-started from %s", latest)
        return
    if not os.path.isfile(source):
        raise MissingCheckpointError(f"--warm_start {source}: no such file or model directory")
    other = keras.models.load_model(source, compile=False)
    try:
        model.set_weights(other.get_weights())
    except ValueError as e:
        raise CheckpointMismatchError(
            f"--warm_start {source}: its weights do not fit this model ({e}); "
            "check --base_filters and the records' image size") from e
    logging.info("warm-started from %s", source)
