"""Everything of a run that only the chief writes or prints, behind one object.

`create(model_dir, chief=..., verbose=...)` returns a `Reporter` on the chief and a
`SilentReporter` (the same methods, doing nothing) on every other worker, so the trainer
calls it unconditionally, like Flax's `create_default_writer(just_logging=...)`. It
writes `config.json`, `history.csv` and its plots, the TensorBoard logs, the best and the
final model and the SavedModel, and prints the progress. Checkpoints (and run.json, written
with the first one) are not here: every worker must take part in saving them
(checkpoints.Saver).

Every write goes through `faults.writing`: a full or read-only disk stops the run with a
message naming the file (an OutputError), and, the writes being atomic, the files of
earlier epochs stay intact.
"""

import json
import os

import keras
import tensorflow as tf
from absl import logging

from core import files
from core import options
from launch.layout import BEST_DIR
from launch.layout import CONFIG_FILE
from launch.layout import MODEL_FILE as FINAL_MODEL
from launch.layout import PREPROCESSING_FILE
from launch.layout import SAVED_MODEL_DIR
from launch.training import faults
from launch.training import history
from launch.training import summaries
from launch.training.config import TrainConfig


def create(model_dir: str, *, chief: bool, verbose: bool) -> "SilentReporter":
    """The reporter of this worker: writing on the chief, silent elsewhere."""
    return Reporter(model_dir, verbose) if chief else SilentReporter()


class SilentReporter:
    """A reporter that writes and prints nothing: what non-chief workers get."""

    chief = False

    def start(self, config: TrainConfig, run: dict, model: keras.Model, start_epoch: int) -> None:
        """Run start: config.json, model summary, history of the finished epochs."""

    def last_row(self) -> dict:
        """The last recorded history row ({} when none)."""
        return {}

    def epoch_start(self, epoch: int, done_steps: int) -> None:
        """An epoch begins (0-based `epoch`), `done_steps` of its steps already trained."""

    def before_call(self, step: int) -> None:
        """A `train_steps` call starts after global `step` (starts a profiler trace)."""

    def chunk(self, step: int, epoch_step: int, totals: dict, images_per_s: float) -> None:
        """A `train_steps` call ended at global `step` with these metric sums."""

    def epoch_end(self, row: dict, model: keras.Model, records) -> None:
        """An epoch's history row: record, plot, log, keep the best model, print."""

    def finish(self, model: keras.Model) -> None:
        """Exports the final model and the SavedModel, closes the logs."""


class Reporter(SilentReporter):
    """The chief's reporter (see the module docstring)."""

    chief = True

    def __init__(self, model_dir: str, verbose: bool):
        self._model_dir = model_dir
        self._verbose = verbose
        self._rows: list[dict] = []
        self._best_dice = -1.0
        self._writer = None
        self._bar = None
        self._epochs = self._steps_per_epoch = self._summary_images = 0
        self._plots = self._saved_model = True  # --plots, --saved_model
        self._profile = None  # (START, END) of --profile_steps
        self._profiling = False

    def start(self, config, run, model, start_epoch):
        self._profile = config.profile_range
        path = os.path.join(self._model_dir, CONFIG_FILE)
        with faults.writing("run configuration", path):
            files.write_atomic(path, options.to_json(config))
        # isic-evaluate and isic-predict prepare new images as the training records were.
        path = os.path.join(self._model_dir, PREPROCESSING_FILE)
        with faults.writing("preprocessing record", path):
            files.write_atomic(path, json.dumps(run["preprocessing"], indent=1, sort_keys=True) + "\n")
        if self._verbose:
            model.summary(print_fn=lambda line, **_: print(line))
        self._rows = history.read_history(self._model_dir, up_to_epoch=start_epoch)
        self._best_dice = max([r.get("val_dice", -1.0) for r in self._rows], default=-1.0)
        self._epochs, self._summary_images = config.epochs, config.summary_images
        self._plots, self._saved_model = config.plots, config.saved_model
        self._steps_per_epoch = run["steps_per_epoch"]
        with self._logging():
            self._writer = summaries.Writer(self._model_dir)

    def last_row(self):
        return dict(self._rows[-1]) if self._rows else {}

    def epoch_start(self, epoch, done_steps):
        self._bar = keras.utils.Progbar(
            self._steps_per_epoch,
            verbose=1 if self._verbose else 0,
            stateful_metrics=("loss", "dice", "img/s"),
        )
        self._bar.update(done_steps)
        if self._verbose:
            print(f"Epoch {epoch + 1}/{self._epochs}")

    def before_call(self, step):
        if self._profile and step == self._profile[0]:
            tf.profiler.experimental.start(os.path.join(self._model_dir, summaries.LOG_DIR))
            self._profiling = True

    def _stop_profile(self, step=None):
        if self._profiling and (step is None or step >= self._profile[1]):
            tf.profiler.experimental.stop()
            self._profiling = False
            logging.info(
                "profiler trace of steps %d-%d written under %s",
                self._profile[0] + 1,
                self._profile[1],
                os.path.join(self._model_dir, summaries.LOG_DIR),
            )

    def chunk(self, step, epoch_step, totals, images_per_s):
        self._stop_profile(step)
        loss = totals["loss"] / totals["count"]
        self._bar.update(
            epoch_step,
            values=[("loss", loss), ("dice", totals["dice"] / totals["count"]), ("img/s", images_per_s)],
        )
        with self._logging():
            self._writer.scalars(step, {"train/loss_step": loss})

    def epoch_end(self, row, model, records):
        self._rows.append(row)
        path = os.path.join(self._model_dir, history.HISTORY_FILE)
        with faults.writing("training history", path):
            history.write_history(self._model_dir, self._rows)
        if self._plots:
            with faults.writing("history plots", os.path.join(self._model_dir, history.PLOTS[0][0])):
                history.plot_history(self._model_dir, self._rows)
        with self._logging():
            self._writer.epoch(row["step"], row)
        if "val_dice" in row and self._summary_images:  # runs the model: not only a write
            self._writer.validation_images(row["step"], model, records, self._summary_images)
        if "val_dice" in row and row["val_dice"] > self._best_dice:
            save_model(model, os.path.join(self._model_dir, BEST_DIR, FINAL_MODEL), "best model")
            self._best_dice = row["val_dice"]
        if self._verbose:
            print(
                " - ".join(f"{k} {row[k]:.4f}" for k in ("loss", "dice", "val_loss", "val_dice") if k in row)
            )

    def finish(self, model):
        self._stop_profile()  # END past the last step
        final = os.path.join(self._model_dir, FINAL_MODEL)
        save_model(model, final, "final model")
        if self._saved_model:
            export_saved_model(model, os.path.join(self._model_dir, SAVED_MODEL_DIR))
        with self._logging():
            self._writer.close()
        if not self._verbose:
            return
        print(f"Final model: {final}")
        if self._best_dice >= 0:
            print(
                f"Best by validation Dice ({self._best_dice:.4f}): "
                f"{os.path.join(self._model_dir, BEST_DIR, FINAL_MODEL)}"
            )
        else:
            print("No validation split: no best model was kept")

    def _logging(self):
        return faults.writing("TensorBoard log", os.path.join(self._model_dir, summaries.LOG_DIR))


def save_model(model: keras.Model, path: str, what: str = "model") -> None:
    """Saves a `.keras` file atomically (a crash or a full disk never leaves a truncated
    model; the previous file stays); OutputError if it cannot be written."""
    with faults.writing(what, path, kept=_kept(path)):
        with files.atomic_path(path) as tmp:
            model.save(tmp)


def export_saved_model(model: keras.Model, path: str) -> None:
    """Exports the SavedModel folder atomically (files.atomic_dir); OutputError if it
    cannot be written."""
    with faults.writing("SavedModel", path, kept=_kept(path)):
        with files.atomic_dir(path, marker="saved_model.pb") as tmp:
            model.export(tmp, verbose=False)


def _kept(path: str) -> str:
    return f"The previous {os.path.basename(path)} is intact" if files.exists(path) else ""
