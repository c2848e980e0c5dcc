"""isic-preprocess: image/mask folders -> S x S sharded TFRecords with fixed splits.

  isic-preprocess --data_dir D --output_dir T
      reads D/images/<ID>.jpg|.jpeg|.png and D/masks/<ID>_segmentation.png
  isic-preprocess --images_dir I --masks_dir M --output_dir T
      the same with the two folders given separately (e.g. ISIC's own folder names)
  isic-preprocess --data_dir A --data_dir B --output_dir T
      one dataset from several folders (or repeated --images_dir/--masks_dir pairs);
      IDs must be unique across them, and each record remembers its folder

Writes T/{train,val,test}-NNNNN-of-MMMMM.tfrecord and, last, T/manifest.json.
Re-running with the same inputs and flags returns at once; other flags against an
existing output are refused unless --overwrite. Bad pairs are listed and the run fails
(exit code 1, nothing published) unless --skip_bad. See docs/preprocessing.md.
"""

from absl import app

from core.errors import InputError
from launch import cli
from preprocessing import build
from preprocessing import pairs
from preprocessing.config import BuildConfig

# No TensorFlow, at import or while building: the decoding workers are started with
# 'spawn', which re-imports this module in each of them, and the builder writes TFRecords
# without it (preprocessing/tfrecord.py).

PATHS = {
    "data_dir": "Dataset folder with images/ and masks/ sub-folders; repeat it to build "
    "one dataset from several folders. Alternative to --images_dir plus --masks_dir.",
    "images_dir": "Folder of <ID>.jpg|.jpeg|.png images (with --masks_dir, instead of "
    "--data_dir); repeat both, in the same order, for several folders.",
    "masks_dir": "Folder of <ID>_segmentation.png masks (with --images_dir).",
    "output_dir": "Where the shards and manifest.json are written (created if needed).",
}


def main(args, config: BuildConfig) -> int:
    try:
        inputs = pairs.input_dirs(args.data_dir, args.images_dir, args.masks_dir)
    except InputError as e:  # a combination of folder flags that cannot work
        raise app.UsageError(str(e)) from None
    build.build_records(inputs, args.output_dir, config, progress=True)
    return 0


def run() -> None:
    """Console-script entry point (isic-preprocess)."""
    cli.run(
        __name__,
        BuildConfig,
        main,
        paths=PATHS,
        required=("output_dir",),
        multi_paths=("data_dir", "images_dir", "masks_dir"),
        uses_tensorflow=False,
    )


if __name__ == "__main__":
    run()
