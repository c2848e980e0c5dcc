"""isic-preprocess: image/mask folders -> S x S sharded TFRecords with fixed splits.

  isic-preprocess --data_dir D --output_dir T
      reads D/images/<ID>.jpg|.jpeg|.png and D/masks/<ID>_segmentation.png
  isic-preprocess --images_dir I --masks_dir M --output_dir T
      the same with the two folders given separately (e.g. ISIC's own folder names)

Writes T/{train,val,test}-NNNNN-of-MMMMM.tfrecord and, last, T/manifest.json.
Re-running with the same inputs and flags returns at once; other flags against an
existing output are refused unless --overwrite. Bad pairs are listed and the run fails
(exit code 1, nothing published) unless --skip_bad. See docs/preprocessing.md.
"""

import os
import sys

from absl import app, flags

from launch import console_tmp as console
from preprocessing import pairs

# preprocessing.build (and with it TensorFlow) is imported inside main(), not here: the
# decoding workers are started with 'spawn', which re-imports this module in each of
# them, and TensorFlow would cost every worker ~9 s and ~600 MB it never uses. (pairs
# needs only the standard library.)

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset folder with images/ and masks/ sub-folders. "
    "Alternative to --images_dir plus --masks_dir.")
_IMAGES_DIR = flags.DEFINE_string(
    "images_dir", None, "Folder of <ID>.jpg|.jpeg|.png images (with --masks_dir, instead of --data_dir).")
_MASKS_DIR = flags.DEFINE_string(
    "masks_dir", None, "Folder of <ID>_segmentation.png masks (with --images_dir, instead of --data_dir).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the shards and manifest.json are written (created if needed).")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 128, "Records hold image_size x image_size images and masks.", lower_bound=1)
_SPLITS = flags.DEFINE_string(
    "splits", "0.8,0.1,0.1", "train,val,test fractions summing to 1 (zeros allowed, e.g. "
    "0,0,1 for a test-only set). Counts are exact (largest-remainder rounding).")
_SEED = flags.DEFINE_integer("seed", 0, "Split seed: the same IDs and seed give the same splits.")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Decoding processes (default: all available CPUs; 1: no "
    "subprocesses). Never changes the output bytes.", lower_bound=1)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Shards per split, capped at the split's record count (default: "
    "min(16, max(8, ceil(n/64)))).", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing build in --output_dir (needed when inputs or flags changed).")
_SKIP_BAD = flags.DEFINE_bool(
    "skip_bad", False, "Leave out bad pairs (listed, and recorded in manifest.json) instead of failing.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        images_dir, masks_dir = pairs.input_dirs(_DATA_DIR.value, _IMAGES_DIR.value, _MASKS_DIR.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if not _OUTPUT_DIR.value:
        raise app.UsageError("--output_dir is required")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before TensorFlow loads
    from preprocessing import build, splits  # pylint: disable=g-import-not-at-top
    try:
        fractions = splits.parse_fractions(_SPLITS.value)
    except ValueError as e:
        raise app.UsageError(f"--splits: {e}") from None
    try:
        build.build_records(
            images_dir, masks_dir, _OUTPUT_DIR.value, image_size=_IMAGE_SIZE.value,
            fractions=fractions, seed=_SEED.value, num_workers=_NUM_WORKERS.value,
            num_shards=_NUM_SHARDS.value, overwrite=_OVERWRITE.value,
            skip_bad=_SKIP_BAD.value, progress=True)
    except FileNotFoundError as e:
        raise app.UsageError(str(e)) from None
    except build.BuildError as e:
        # Bad data and conflicting outputs are the user's to fix: a message, no traceback.
        print(f"isic-preprocess: error: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console-script entry point (isic-preprocess)."""
    console.run(main, __name__)


if __name__ == "__main__":
    run()
