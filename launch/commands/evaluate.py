"""`isic-evaluate`: score a trained model on a split of the TFRecords, as ISIC 2018 Task 1 does.

  isic-evaluate --data_dir records/ --model runs/unet [--split test] [--full_resolution]

Writes metrics.json, per_image.csv and cases.png into --output_dir (default
<model dir>/eval-<split>, or eval-<split>-full) and prints a short table.
"""

import os
import sys

from absl import app
from absl import flags

from launch import cli as runtime
from launch import console_tmp as console

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None, "TFRecord dataset directory (with manifest.json) from isic-preprocess.")
flags.DEFINE_string("model", None, "A model directory from isic-train (uses its ISIC-UNet.keras; "
                    "pass runs/unet/best for the best-by-validation model) or a .keras file.")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "The split to score.")
flags.DEFINE_bool("full_resolution", False, "Resize each probability map to its image's original "
                  "size before thresholding and compare with the original mask from the source "
                  "folder (the challenge's numbers). Default: score at the records' size (fast).")
flags.DEFINE_string("data_source", None, "Full resolution: the folder with the original images/ "
                    "and masks/, if it moved since the records were built (default: the folders "
                    "recorded in the manifest).")
flags.DEFINE_string("images_dir", None, "Full resolution: the original images folder (instead of "
                    "--data_source).")
flags.DEFINE_string("masks_dir", None, "Full resolution: the original masks folder (instead of "
                    "--data_source).")
flags.DEFINE_string("output_dir", None, "Where the outputs go (default <model dir>/eval-<split>[-full]).")
flags.DEFINE_integer("batch_size", 32, "Images per prediction batch.")
flags.DEFINE_float("threshold", 0.5, "A pixel is foreground where its probability is > threshold "
                   "(0.5 in the ISIC challenge).")

flags.mark_flags_as_required(["data_dir", "model"])


def _source_overrides() -> tuple[str | None, str | None]:
    """(images_dir, masks_dir) from --data_source or --images_dir/--masks_dir."""
    if FLAGS.data_source and (FLAGS.images_dir or FLAGS.masks_dir):
        raise app.UsageError("pass either --data_source or --images_dir/--masks_dir, not both")
    if (FLAGS.data_source or FLAGS.images_dir or FLAGS.masks_dir) and not FLAGS.full_resolution:
        raise app.UsageError("--data_source, --images_dir and --masks_dir are used only with "
                             "--full_resolution")
    if FLAGS.data_source:
        return os.path.join(FLAGS.data_source, "images"), os.path.join(FLAGS.data_source, "masks")
    return FLAGS.images_dir, FLAGS.masks_dir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.batch_size <= 0:
        raise app.UsageError(f"--batch_size must be positive, got {FLAGS.batch_size}")
    if not 0.0 <= FLAGS.threshold < 1.0:
        raise app.UsageError(f"--threshold must be in [0, 1), got {FLAGS.threshold}")
    images_dir, masks_dir = _source_overrides()
    runtime.prefer_onednn()  # before TensorFlow is imported
    # Imported after flag parsing so `isic-evaluate --help` answers without loading TensorFlow.
    import tensorflow as tf

    from launch.inference import evaluation

    try:
        summary = evaluation.evaluate(
            FLAGS.model, FLAGS.data_dir, FLAGS.split, full_resolution=FLAGS.full_resolution,
            images_dir=images_dir, masks_dir=masks_dir, output_dir=FLAGS.output_dir,
            batch_size=FLAGS.batch_size, threshold=FLAGS.threshold)
    except (FileNotFoundError, ValueError) as e:
        print(f"isic-evaluate: error: {e}", file=sys.stderr)
        return 1
    except tf.errors.OpError as e:  # damaged or truncated shards
        print(f"isic-evaluate: error: cannot read the records of {FLAGS.data_dir} ({e.message}); "
              "rebuild them with isic-preprocess --overwrite", file=sys.stderr)
        return 1
    print(evaluation.format_table(summary))
    print(f"metrics.json, per_image.csv and cases.png in {summary['output_dir']}")
    return 0


def run():
    console.run(main, __name__)


if __name__ == "__main__":
    run()
