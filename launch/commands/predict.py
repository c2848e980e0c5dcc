"""`isic-predict`: segment every image of a folder into ISIC submission masks.

  isic-predict --model runs/unet --input_dir photos/ --output_dir masks/ [--overlays]

Writes masks/<ID>_segmentation.png (8-bit, 0/255, the input's size) for each
photos/<ID>.jpg|.jpeg|.png. Exits with 1 if any image could not be read (the others are
still written).
"""

import sys

from absl import app
from absl import flags

from launch import cli as runtime
from launch import console_tmp as console

FLAGS = flags.FLAGS

flags.DEFINE_string("model", None, "A model directory from isic-train (uses its ISIC-UNet.keras; "
                    "pass runs/unet/best for the best-by-validation model) or a .keras file.")
flags.DEFINE_string("input_dir", None, "Folder of JPEG or PNG images (any size and mode); other "
                    "files are ignored.")
flags.DEFINE_string("output_dir", None, "Where <ID>_segmentation.png files go (created).")
flags.DEFINE_bool("overlays", False, "Also write overlays/<ID>_overlay.jpg: the image with the "
                  "predicted lesion tinted and outlined.")
flags.DEFINE_integer("batch_size", 16, "Images per prediction batch.")
flags.DEFINE_float("threshold", 0.5, "A pixel is foreground where its probability is > threshold "
                   "(0.5 in the ISIC challenge).")

flags.mark_flags_as_required(["model", "input_dir", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.batch_size <= 0:
        raise app.UsageError(f"--batch_size must be positive, got {FLAGS.batch_size}")
    if not 0.0 <= FLAGS.threshold < 1.0:
        raise app.UsageError(f"--threshold must be in [0, 1), got {FLAGS.threshold}")
    runtime.prefer_onednn()  # before TensorFlow is imported
    # Imported after flag parsing so `isic-predict --help` answers without loading TensorFlow.
    from launch.inference import prediction

    try:
        report = prediction.predict_folder(
            FLAGS.model, FLAGS.input_dir, FLAGS.output_dir, batch_size=FLAGS.batch_size,
            threshold=FLAGS.threshold, overlays=FLAGS.overlays)
    except (FileNotFoundError, ValueError) as e:
        print(f"isic-predict: error: {e}", file=sys.stderr)
        return 1
    for name, reason in report["failed"]:
        print(f"isic-predict: skipped {name}: {reason}", file=sys.stderr)
    print(f"{len(report['written'])} masks written to {report['output_dir']}"
          + (f" (overlays in {report['output_dir']}/overlays)" if FLAGS.overlays else "")
          + f"; {len(report['failed'])} images failed; {len(report['ignored'])} other files ignored")
    return 1 if report["failed"] else 0


def run():
    console.run(main, __name__)


if __name__ == "__main__":
    run()
