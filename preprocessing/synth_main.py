"""isic-synth: writes a synthetic dermoscopy-like dataset in the input layout.

  isic-synth --output_dir D --num_images N --seed S

writes D/images/SYNTH_<7 digits>.jpg and D/masks/SYNTH_<7 digits>_segmentation.png
(0/255), then D/synth.json. Same flags, same bytes. Re-running with the same flags on a
complete output returns at once without touching the files (so a later isic-preprocess
sees unchanged inputs); other flags replace the SYNTH_* files. See synth.write_dataset.
"""

import os

from absl import app, flags

from preprocessing import console
from preprocessing import synth

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Dataset folder to create (images/, masks/).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 400, "Number of image/mask pairs.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed; pair i depends only on (seed, i).")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Drawing processes (default: all available CPUs). Never changes "
    "the output bytes.", lower_bound=1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _OUTPUT_DIR.value:
        raise app.UsageError("--output_dir is required")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before keras loads TensorFlow
    try:
        synth.write_dataset(_OUTPUT_DIR.value, _NUM_IMAGES.value, _SEED.value, _NUM_WORKERS.value)
    except FileExistsError as e:
        raise app.UsageError(str(e)) from None


def run() -> None:
    """Console-script entry point (isic-synth)."""
    console.run(main, __name__)


if __name__ == "__main__":
    run()
