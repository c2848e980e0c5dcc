"""Checkpoints of a training run: save (chief only), restore, warm start.

A model directory holds `checkpoints/ckpt-N.*` (model, optimizer with its loss scale, and
the global step), the state file `checkpoints/checkpoint` naming the newest, and
`checkpoints/run.json`, the settings that must not change within a run (model shape,
batch size, steps per epoch, seed: run_identity.py). Resume is defined by the model directory: training
continues from its newest intact checkpoint; the epoch and the position inside the epoch
follow from the step. A damaged newer checkpoint is moved aside with a warning; a run
with no intact checkpoint is an error, never a silent new start (`--restart` begins
again on purpose, moving the old run aside); see checkpoint_integrity.py. Warm starting
(weights only, from another run) is a separate, explicit option.

Under MultiWorkerMirroredStrategy every worker must call `save` (saving may run
collectives), so non-chief workers save into a private temporary directory that they
delete afterwards: only the chief's files appear in the model directory.
"""

import contextlib
import datetime
import glob
import os
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from core import files
from core.errors import UserError
from launch.layout import CHECKPOINT_DIR
from launch.layout import RUN_FILE
from launch.training import checkpoint_integrity as integrity
from launch.training import faults
from launch.training import history
from launch.training import run_identity


class MissingCheckpointError(UserError, FileNotFoundError):
    """--warm_start names no file or model directory with a checkpoint."""


class NoUsableCheckpointError(UserError, FileNotFoundError):
    """`model_dir` holds a run but none of its checkpoints is complete."""


def restore_latest(checkpoint: tf.train.Checkpoint, model_dir: str, chief: bool = True) -> str | None:
    """Restores the newest intact checkpoint of `model_dir` (all workers read the chief's files).

    Newer checkpoints that are damaged or unfinished (checkpoint_integrity.check) are
    skipped with a warning naming them; the chief moves them into
    `checkpoints/damaged/<time>/` (never deletes them) and points the state file at the
    restored one, so the next save cannot take a damaged file's name. Every worker makes
    the same choice from the same files, whether or not the chief has moved them yet.

    Returns the restored checkpoint's path, or None for a new run: a directory without
    checkpoint files, or whose only ones are a first save cut short (no index, no state
    file: nothing was ever acknowledged as saved).
    Raises:
      NoUsableCheckpointError: the directory holds a run (a state file, run.json,
        history.csv or a checkpoint index) but no intact checkpoint; nothing is moved.
    """
    directory = os.path.join(model_dir, CHECKPOINT_DIR)
    latest, damaged = newest_intact(directory)
    if latest is None and _holds_run(model_dir, damaged):
        raise _no_usable_checkpoint(model_dir, directory, damaged)
    for number, why, names in damaged:
        moved = integrity.move_aside(directory, names) if chief else None
        logging.warning(
            "checkpoint %s is damaged or unfinished (%s)%s; %s",
            os.path.join(directory, f"ckpt-{number}"),
            why,
            f": moved to {moved}" if moved else "",
            f"resuming from {latest}" if latest else "starting a new run",
        )
    if latest is None:
        return None
    if chief and damaged:
        kept = [
            n
            for n in integrity.read_state(directory)
            if _number(n) < _number(latest) and integrity.files_of(directory, _number(n))
        ]
        integrity.write_state(directory, kept + [os.path.basename(latest)])
    _restore(checkpoint, latest)
    logging.info("restored %s", latest)
    return latest


def _no_usable_checkpoint(model_dir: str, directory: str, damaged: list) -> NoUsableCheckpointError:
    """The refusal for a directory that holds a run but no intact checkpoint: it names
    the damaged checkpoints and the run's files."""
    found = [f"{os.path.join(directory, names[0])} ({why})" for _, why, names in damaged]
    found += [
        p
        for p in (
            os.path.join(directory, integrity.STATE_FILE),
            os.path.join(directory, RUN_FILE),
            os.path.join(model_dir, history.HISTORY_FILE),
        )
        if files.exists(p)
    ]
    return NoUsableCheckpointError(
        f"{model_dir} holds a training run but no usable checkpoint: "
        + "; ".join(found)
        + ". Nothing was changed. To begin a new run there on purpose, "
        "pass --restart (the old files are moved into replaced-<time>/, not deleted); or "
        "use another --model_dir; or put back an intact checkpoints/ (e.g. from a backup)."
    )


def _restore(checkpoint: tf.train.Checkpoint, latest: str) -> None:
    """Restores the intact checkpoint `latest` into `checkpoint`, under any precision."""
    try:
        view = _matching_view(checkpoint, latest)
        status = view.restore(latest)
        if view is not checkpoint:
            status.expect_partial()  # a saved loss scale that this precision does not use
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, IndexError, AssertionError) as e:
        # Complete files that still do not restore: another model's, or corrupt inside.
        raise NoUsableCheckpointError(
            f"cannot restore {latest} ({type(e).__name__}: {str(e)[:300]}). Nothing was "
            "changed. Move that checkpoint's files out of the way to resume from an older one, "
            "or pass --restart, or use another --model_dir."
        ) from None


def _matching_view(checkpoint: tf.train.Checkpoint, path: str) -> tf.train.Checkpoint:
    """`checkpoint` (model, optimizer, step), or a view of it whose optimizer has the layout
    saved at `path`, when one of the two is wrapped in a LossScaleOptimizer (mixed_float16)
    and the other is not: resuming under another precision (run.json's run_identity.PRECISION_KEY).

    A LossScaleOptimizer saves its own variables (dynamic_scale, step_counter) and the
    wrapped optimizer under `optimizer/inner_optimizer/` (keras/src/optimizers/
    loss_scale_optimizer.py:96 and 105-118); a plain one saves its state under
    `optimizer/`. The view maps the inner optimizer onto the saved one: from float32 or
    bfloat16 to float16 the scale starts at its initial value as in a new run; the other
    way the saved scale is not needed. Model variables are float32 under every policy.
    """
    optimizer = getattr(checkpoint, "optimizer", None)
    if optimizer is None:  # a checkpoint of other objects (tests): nothing to match
        return checkpoint
    saved_scaled = any(name.startswith("optimizer/inner_optimizer/") for name in integrity.tensor_names(path))
    if saved_scaled == isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return checkpoint
    if saved_scaled:
        saved = tf.Module()  # stands for the saved LossScaleOptimizer
        saved.inner_optimizer = optimizer
    else:
        saved = optimizer.inner_optimizer
    logging.info(
        "%s was saved %s loss scaling: restoring the optimizer state %s it",
        path,
        "with" if saved_scaled else "without",
        "out of" if saved_scaled else "into",
    )
    view = tf.train.Checkpoint(model=checkpoint.model, optimizer=saved, step=checkpoint.step)
    if getattr(checkpoint, "average", None) is not None:  # --ema_decay
        view.average = checkpoint.average
    return view


def newest_intact(directory: str) -> tuple[str | None, list[tuple[int, str, list[str]]]]:
    """(path of the newest intact checkpoint in `directory` or None, the newer damaged or
    unfinished ones as [(number, why, their file names)], newest first). Reads only."""
    damaged = []
    for number, names in sorted(integrity.numbered_files(directory).items(), reverse=True):
        prefix = os.path.join(directory, f"ckpt-{number}")
        try:
            integrity.check(prefix)
        except integrity.DamagedError as e:
            unfinished = all("_temp" in n for n in names)
            damaged.append((number, "a save that never finished" if unfinished else str(e), names))
            continue
        return prefix, damaged
    return None, damaged


def _holds_run(model_dir: str, damaged: list) -> bool:
    """Whether `model_dir` shows a run was saved: a state file, run.json, history.csv or
    a checkpoint index. Data shards or a `_temp` folder alone are a first save cut short
    (TensorFlow writes the index last)."""
    directory = os.path.join(model_dir, CHECKPOINT_DIR)
    return (
        any(n.endswith(".index") for _, _, names in damaged for n in names)
        or files.exists(os.path.join(directory, integrity.STATE_FILE))
        or files.exists(os.path.join(directory, RUN_FILE))
        or files.exists(os.path.join(model_dir, history.HISTORY_FILE))
    )


def _number(name: str) -> int:
    return int(os.path.basename(name).rsplit("-", 1)[1])


def set_aside_previous_run(model_dir: str) -> str | None:
    """--restart (chief): moves the run's checkpoints/ and history.csv into
    `model_dir/replaced-<UTC time>/`; returns that folder (None: nothing to move)."""
    moving = [
        p
        for p in (os.path.join(model_dir, CHECKPOINT_DIR), os.path.join(model_dir, history.HISTORY_FILE))
        if files.exists(p)
    ]
    if not moving:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = os.path.join(model_dir, f"replaced-{stamp}")
    files.makedirs(target)
    for path in moving:
        files.rename(path, os.path.join(target, os.path.basename(path)))
    logging.warning(
        "--restart: moved the previous run's %s into %s (kept, not deleted); starting a new run at step 0",
        " and ".join(os.path.basename(p) for p in moving),
        target,
    )
    return target


class Saver:
    """Saves `checkpoint` on every worker, because saving may run collectives.

    The chief writes `model_dir/checkpoints/ckpt-<step>`, checks it
    (checkpoint_integrity.check), and only then replaces the state file
    `checkpoints/checkpoint` to name it, then deletes the checkpoints beyond the newest
    `max_to_keep` (after the state file no longer names them). A crash, kill or full disk
    anywhere in a save therefore leaves the previous checkpoint as the latest; the files
    it left are found and moved aside by the next `restore_latest`. A file that already
    bears the new checkpoint's name (left by such a crash) is moved aside first, never
    overwritten. Other workers write into a temporary directory deleted right away.
    `last` is the newest checkpoint of the run (the restored one until the first save; on
    other workers the chief's file of the same step) and `last_step` its step (None for a
    new run before its first save). The chief writes `run` into run.json with the first
    checkpoint. A save that cannot be written (full or read-only disk) raises
    faults.OutputError; the previous checkpoints stay intact.
    """

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        model_dir: str,
        chief: bool,
        last: str | None = None,
        max_to_keep: int = 3,
        run: dict | None = None,
    ):
        self._checkpoint, self._model_dir, self._chief = checkpoint, model_dir, chief
        self._directory = os.path.join(model_dir, CHECKPOINT_DIR)  # the chief's
        self._max_to_keep, self._run = max_to_keep, run
        # `restore` creates the save counter and then asserts it was in the file; `write`
        # (unlike `save`, which would also rewrite the state file itself) saves it only
        # if it exists: create it now (tensorflow/python/checkpoint/checkpoint.py,
        # Checkpoint.save_counter).
        _ = checkpoint.save_counter
        self.last = last
        self.last_step = _number(last) if last else None

    def save(self, step: int) -> None:
        """Writes the checkpoint of global step `step`."""
        if not self._chief:
            tmp = tempfile.mkdtemp(prefix="isic-ckpt-")
            try:
                with faults.writing("temporary checkpoint (a worker's share of the save)", tmp):
                    self._checkpoint.write(os.path.join(tmp, "ckpt"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.last, self.last_step = os.path.join(self._directory, f"ckpt-{step}"), step
            return
        name = f"ckpt-{step}"
        target = os.path.join(self._directory, name)
        kept = (
            f"The previous checkpoint {self.last} is intact" if self.last else "No earlier checkpoint exists"
        )
        try:
            with faults.writing("checkpoint", target, kept=kept):
                files.makedirs(self._directory)
                stale = integrity.files_of(self._directory, step)
                if stale:
                    logging.warning(
                        "moved the files %s, left by an unfinished save, to %s before writing %s",
                        stale,
                        integrity.move_aside(self._directory, stale),
                        target,
                    )
                self._checkpoint.write(target)
                _check_written(target, self._directory, kept)
                if self._run is not None:
                    run_identity.write_run(self._model_dir, self._run)
                names = [n for n in integrity.read_state(self._directory) if n != name] + [name]
                integrity.write_state(self._directory, names[-self._max_to_keep :])
        except faults.OutputError:
            # TensorFlow leaves its half-written ckpt-<step>_temp folder: free its space.
            for leftover in files.glob(glob.escape(target) + "_temp*"):
                files.rmtree(leftover)
            raise
        for old in names[: -self._max_to_keep]:  # no longer named by the state file
            for leftover in integrity.files_of(self._directory, _number(old)):
                with contextlib.suppress(OSError):
                    files.remove(os.path.join(self._directory, leftover))
        self.last, self.last_step = target, step


def _check_written(target: str, directory: str, kept: str) -> None:
    """Raises faults.OutputError (moving the files aside) if the checkpoint just written
    at `target` is incomplete: a filesystem that acknowledged writes it did not keep."""
    try:
        integrity.check(target)
    except integrity.DamagedError as e:
        number = _number(target)
        moved = integrity.move_aside(directory, integrity.files_of(directory, number))
        raise faults.OutputError(
            f"the checkpoint {target} just written is incomplete ({e}); its files were moved "
            f"to {moved}. {kept}. Check the disk (a full or failing filesystem), then run the "
            "same command again: it resumes from the last checkpoint.",
            target,
            str(e),
        ) from None


def warm_start(model: keras.Model, source: str) -> None:
    """Loads weights only from a `.keras` file or another run's model directory."""
    if files.isdir(source):
        latest, damaged = newest_intact(os.path.join(source, CHECKPOINT_DIR))
        for number, why, _ in damaged:  # another run's folder: read only, nothing is moved
            logging.warning(
                "--warm_start %s: skipping its damaged checkpoint ckpt-%d (%s)", source, number, why
            )
        if latest is None:
            hint = (
                " (it is a TensorFlow SavedModel, which holds no training state: pass the "
                "model directory above it, or its ISIC-UNet.keras)"
                if files.isfile(os.path.join(source, "saved_model.pb"))
                else ""
            )
            raise MissingCheckpointError(
                f"--warm_start {source}: no checkpoints/ckpt-* in that directory{hint}"
            )
        tf.train.Checkpoint(model=model).restore(latest).expect_partial().assert_existing_objects_matched()
        logging.info("warm-started from %s", latest)
        return
    if not files.isfile(source):
        raise MissingCheckpointError(f"--warm_start {source}: no such file or model directory")
    other = keras.models.load_model(source, compile=False)
    try:
        model.set_weights(other.get_weights())
    except ValueError as e:
        raise run_identity.CheckpointMismatchError(
            f"--warm_start {source}: its weights do not fit this model ({e}); "
            "check --base_filters and the records' image size"
        ) from e
    logging.info("warm-started from %s", source)
