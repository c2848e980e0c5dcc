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
from core import files
from core.errors import UserError
from launch.layout import CHECKPOINT_DIR, RUN_FILE

# Settings that define the model's variables: a mismatch cannot be restored.
SHAPE_KEYS = ("image_size", "base_filters", "depth")
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


class CheckpointMismatchError(UserError, ValueError):
    """The model directory holds a run whose settings differ from the requested ones."""


class MissingCheckpointError(UserError, FileNotFoundError):
    """--warm_start names no file or model directory with a checkpoint."""


def run_identity(config: TrainConfig, image_size: int, depth: int, steps_per_epoch: int,
                 preprocessing: dict, precision: str) -> dict:
    """What run.json records: the SHAPE_KEYS, ORDER_KEYS, INPUT_KEYS and the resolved
    precision (PRECISION_KEY)."""
    return {"image_size": image_size, "base_filters": config.base_filters, "depth": depth,
            "batch_size": config.batch_size, "steps_per_epoch": steps_per_epoch,
            "seed": config.seed, "lr_schedule": config.lr_schedule,
            "preprocessing": preprocessing, PRECISION_KEY: precision}


def check_run(model_dir: str, run: dict) -> None:
    """Raises CheckpointMismatchError if `model_dir` holds a run with other settings."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, RUN_FILE)
    if not files.exists(path):
        return
    with files.open(path) as f:
        previous = json.load(f)
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
    started = previous.get(PRECISION_KEY, run.get(PRECISION_KEY))
    if started != run.get(PRECISION_KEY):
        logging.warning("%s was started under --precision %s; resuming under %s (weights and "
                        "optimizer state carry over; a float16 loss scale starts afresh or is "
                        "dropped)", model_dir, started, run.get(PRECISION_KEY))


def write_run(model_dir: str, run: dict) -> None:
    """Records the run's identity next to its checkpoints (chief only, atomic)."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, RUN_FILE)
    if files.exists(path):  # check_run has verified it matches: leave it untouched
        return
    files.write_atomic(path, json.dumps(run, indent=1, sort_keys=True))


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str) -> str | None:
    """Restores the newest checkpoint of `model_dir` (all workers read the chief's files).

    Returns its path, or None when the directory has none (a fresh run).
    """
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    if latest is None:
        return None
    view = _matching_view(checkpoint, latest)
    status = view.restore(latest)
    if view is not checkpoint:
        status.expect_partial()  # a saved loss scale that this precision does not use
    status.assert_existing_objects_matched()
    logging.info("restored %s", latest)
    return latest


def _matching_view(checkpoint: tf.train.Checkpoint, path: str) -> tf.train.Checkpoint:
    """`checkpoint` (model, optimizer, step), or a view of it whose optimizer has the layout
    saved at `path`, when one of the two is wrapped in a LossScaleOptimizer (mixed_float16)
    and the other is not: resuming under another precision (run.json's PRECISION_KEY).

    A LossScaleOptimizer saves its own variables (dynamic_scale, step_counter) and the
    wrapped optimizer under `optimizer/inner_optimizer/` (keras/src/optimizers/
    loss_scale_optimizer.py:96 and 105-118); a plain one saves its state under
    `optimizer/`. The view maps the inner optimizer onto the saved one: from float32 or
    bfloat16 to float16 the scale starts at its initial value as in a new run; the other
    way the saved scale is not needed. Model variables are float32 under every policy.
    """
    saved_scaled = any(name.startswith("optimizer/inner_optimizer/")
                       for name, _ in tf.train.list_variables(path))
    optimizer = checkpoint.optimizer
    if saved_scaled == isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return checkpoint
    if saved_scaled:
        saved = tf.Module()  # stands for the saved LossScaleOptimizer
        saved.inner_optimizer = optimizer
    else:
        saved = optimizer.inner_optimizer
    logging.info("%s was saved %s loss scaling: restoring the optimizer state %s it", path,
                 "with" if saved_scaled else "without", "out of" if saved_scaled else "into")
    return tf.train.Checkpoint(model=checkpoint.model, optimizer=saved, step=checkpoint.step)


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
                for leftover in files.glob(glob.escape(target) + "_temp*"):
                    files.rmtree(leftover)
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
    if files.isdir(source):
        latest = tf.train.latest_checkpoint(os.path.join(source, CHECKPOINT_DIR))
        if latest is None:
            hint = (" (it is a TensorFlow SavedModel, which holds no training state: pass the "
                    "model directory above it, or its ISIC-UNet.keras)"
                    if files.isfile(os.path.join(source, "saved_model.pb")) else "")
            raise MissingCheckpointError(
                f"--warm_start {source}: no checkpoints/ckpt-* in that directory{hint}")
        tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
        logging.info("warm-started from %s", latest)
        return
    if not files.isfile(source):
        raise MissingCheckpointError(f"--warm_start {source}: no such file or model directory")
    other = keras.models.load_model(source, compile=False)
    try:
        model.set_weights(other.get_weights())
    except ValueError as e:
        raise CheckpointMismatchError(
            f"--warm_start {source}: its weights do not fit this model ({e}); "
            "check --base_filters and the records' image size") from e
    logging.info("warm-started from %s", source)
