"""TensorBoard logs of a run (chief only): scalars per chunk and epoch, validation images."""

import os
import time

import keras
import tensorflow as tf

from launch.layout import LOG_DIR
from pipeline import dataset as dataset_lib
from pipeline import records as records_lib

# Per-chunk training scalars are written at most this often: one write costs ~0.4 ms of
# host time, a tenth of a 64-step call of a tiny model (docs/performance.md, loop overhead).
SCALAR_SECONDS = 1.0


class Writer:
    """Writes `model_dir/logs/{train,validation}` event files."""

    def __init__(self, model_dir: str):
        self._train = tf.summary.create_file_writer(os.path.join(model_dir, LOG_DIR, "train"))
        self._val = tf.summary.create_file_writer(os.path.join(model_dir, LOG_DIR, "validation"))
        self._last_scalars = -float("inf")

    def scalars(self, step: int, values: dict) -> None:
        """Training scalars at `step`, e.g. {"train/loss_step": 0.3}; skipped when the last
        ones were written less than SCALAR_SECONDS ago (epoch scalars are never skipped)."""
        now = time.monotonic()
        if now - self._last_scalars < SCALAR_SECONDS:
            return
        self._last_scalars = now
        with self._train.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def epoch(self, step: int, row: dict) -> None:
        """One history row: training metrics under train/, validation ones under validation/."""
        with self._train.as_default(step=step):
            for key in ("loss", "accuracy", "dice", "jaccard", "learning_rate", "images_per_s"):
                if key in row:
                    tf.summary.scalar("epoch/" + key, row[key])
        with self._val.as_default(step=step):
            for key in ("loss", "accuracy", "dice", "jaccard"):
                if "val_" + key in row:
                    tf.summary.scalar("epoch/" + key, row["val_" + key])
        self._train.flush()
        self._val.flush()

    def validation_images(
        self, step: int, model: keras.Model, records: records_lib.Records, count: int
    ) -> None:
        """The first `count` validation images as [image | true mask | predicted mask] strips."""
        batch = next(iter(dataset_lib.read_examples(records, "val", count)))
        probs = model(batch["image"], training=False)  # float32 [n,S,S,1]
        pred = tf.cast(probs > 0.5, tf.float32)
        strip = tf.concat(
            [batch["image"], tf.tile(batch["mask"], [1, 1, 1, 3]), tf.tile(pred, [1, 1, 1, 3])], axis=2
        )  # [n,S,3S,3]
        with self._val.as_default(step=step):
            tf.summary.image("image | truth | prediction", strip, max_outputs=count)
        self._val.flush()

    def close(self) -> None:
        """Flushes and closes both event files."""
        self._train.close()
        self._val.close()
