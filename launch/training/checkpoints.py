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

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

RUN_FILE = "run.json"
# Settings that define the model's variables: a mismatch cannot be restored.
SHAPE_KEYS = ("image_size", "base_filters", "depth")
# Settings that define the data order: a mismatch would not continue the same run.
ORDER_KEYS = ("batch_size", "steps_per_epoch", "seed")


class CheckpointMismatchError(ValueError):
    """The model directory holds a run whose settings differ from the requested ones."""


def check_run(model_dir: str, run: dict) -> None:
    """Raises CheckpointMismatchError if `model_dir` holds a run with other settings."""
    path = os.path.join(model_dir, "checkpoints", RUN_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    for key in SHAPE_KEYS:
        if previous.get(key) != run.get(key):
            raise CheckpointMismatchError(
                f"{model_dir} holds a model with {key}={previous.get(key)}, but this run asks for "
                f"{key}={run.get(key)}. Use a new --model_dir, or start a new run from those weights "
                "with --warm_start only if the shapes match.")
    for key in ORDER_KEYS:
        if previous.get(key) != run.get(key):
            raise CheckpointMismatchError(
                f"{model_dir} was trained with {key}={previous.get(key)}; resuming with "
                f"{key}={run.get(key)} would not continue the same run. Use the original value, "
                "or a new --model_dir (optionally with --warm_start).")


def write_run(model_dir: str, run: dict) -> None:
    """Records the run's identity next to its checkpoints (chief only, atomic)."""
    directory = os.path.join(model_dir, "checkpoints")
    path = os.path.join(directory, RUN_FILE)
    if os.path.exists(path):  # check_run has verified it matches: leave it untouched
        return
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, RUN_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(run, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def make_manager(checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 3
                 ) -> tf.train.CheckpointManager:
    """A manager that keeps the last `max_to_keep` checkpoints in `directory`."""
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep,
                                      checkpoint_name="ckpt")


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str) -> str | None:
    """Restores the newest checkpoint of `model_dir` (all workers read the chief's files).

    Returns its path, or None when the directory has none (a fresh run).
    """
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        return None
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info("restored %s", latest)
    return latest


def save(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager | None,
         step: int) -> str | None:
    """Saves on every worker, because saving may run collectives.

    The chief passes its manager (files in the model directory, old ones rotated out);
    other workers pass None and write into a temporary directory deleted right away.
    """
    if manager is not None:
        return manager.save(checkpoint_number=step)
    tmp = tempfile.mkdtemp(prefix="isic-ckpt-")
    try:
        checkpoint.save(os.path.join(tmp, "ckpt"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def warm_start(model: keras.Model, source: str) -> None:
    """Loads weights only from a `.keras` file or another run's model directory."""
    if os.path.isdir(source):
        latest = tf.train.latest_checkpoint(os.path.join(source, "checkpoints"))
        if latest is None:
            raise FileNotFoundError(f"--warm_start {source}: no checkpoints/ckpt-* in that directory")
        tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
        logging.info("warm-started from %s", latest)
        return
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--warm_start {source}: no such file or model directory")
    other = keras.models.load_model(source, compile=False)
    try:
        model.set_weights(other.get_weights())
    except ValueError as e:
        raise CheckpointMismatchError(
            f"--warm_start {source}: its weights do not fit this model ({e}); "
            "check --base_filters and the records' image size") from e
    logging.info("warm-started from %s", source)
