"""isic-synth: writes a synthetic dermoscopy-like dataset in the input layout.

  isic-synth --output_dir D --num_images N --seed S

writes D/images/SYNTH_<7 digits>.jpg and D/masks/SYNTH_<7 digits>_segmentation.png
(0/255), then D/synth.json. Same flags, same bytes. Re-running with the same flags on a
complete output returns at once without touching the files (so a later isic-preprocess
sees unchanged inputs); other flags replace the SYNTH_* files. Each file is written under
a temporary name and renamed, and synth.json last, so a killed run never leaves a
truncated image behind and the next run completes the set.
"""

import json
import os

from absl import app, flags

from preprocessing import parallel
from preprocessing import synth

# keras (for its progress bar) is imported inside generate(), not here: it loads
# TensorFlow, and the drawing workers, started with 'spawn', re-import this module.

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Dataset folder to create (images/, masks/).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 400, "Number of image/mask pairs.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed; pair i depends only on (seed, i).")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Drawing processes (default: all available CPUs). Never changes "
    "the output bytes.", lower_bound=1)

STAMP_NAME = "synth.json"


def generate(output_dir: str, num_images: int, seed: int, num_workers: int | None = None,
             progress: bool = True) -> bool:
    """Writes the dataset; returns False when it was already complete (nothing written).

    num_workers: drawing processes (None: all CPUs; 1: in this process).

    Raises:
      FileExistsError: images/ or masks/ hold files that isic-synth did not write.
    """
    images_dir, masks_dir = os.path.join(output_dir, "images"), os.path.join(output_dir, "masks")
    stamp = {"num_images": num_images, "seed": seed, "generator_version": synth.GENERATOR_VERSION}
    names = [(synth.case_id(i) + ".jpg", synth.case_id(i) + "_segmentation.png")
             for i in range(num_images)]
    if _read_stamp(output_dir) == stamp and all(
            os.path.isfile(os.path.join(images_dir, a)) and os.path.isfile(os.path.join(masks_dir, b))
            for a, b in names):
        if progress:
            print(f"{output_dir}: already generated ({num_images} pairs, seed {seed})")
        return False
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    _remove_stale(output_dir, images_dir, masks_dir, {a for a, _ in names}, {b for _, b in names})

    bar = None
    if progress:
        import keras  # pylint: disable=g-import-not-at-top
        bar = keras.utils.Progbar(num_images, unit_name="pair")
    workers = min(num_workers or parallel.available_cpus(), num_images)
    tasks = ((seed, i) for i in range(num_images))
    with parallel.ordered_map(_draw, tasks, workers) as encoded:
        for i, ((image_name, mask_name), (jpg, png)) in enumerate(zip(names, encoded)):
            _write_atomic(os.path.join(images_dir, image_name), jpg)
            _write_atomic(os.path.join(masks_dir, mask_name), png)
            if bar:
                bar.update(i + 1)
    _write_atomic(os.path.join(output_dir, STAMP_NAME), json.dumps(stamp, sort_keys=True).encode())
    if progress:
        print(f"Wrote {num_images} pairs to {images_dir} and {masks_dir}")
    return True


def _draw(task: tuple[int, int]) -> tuple[bytes, bytes]:
    """(JPEG, PNG) bytes of pair (seed, index); runs in the worker processes."""
    return synth.encode_pair(*synth.make_pair(*task))


def _read_stamp(output_dir: str) -> dict | None:
    try:
        with open(os.path.join(output_dir, STAMP_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _remove_stale(output_dir, images_dir, masks_dir, keep_images, keep_masks) -> None:
    """Deletes the stamp, then SYNTH_* and temporary files that this run will not
    rewrite; refuses to mix synthetic pairs with anything else."""
    for folder, keep in ((images_dir, keep_images), (masks_dir, keep_masks)):
        foreign = [n for n in os.listdir(folder) if not n.startswith("SYNTH_")]
        if foreign:
            raise FileExistsError(
                f"{os.path.join(folder, foreign[0])} was not written by isic-synth; use an "
                "empty or new --output_dir")
    # Without a stamp the set counts as incomplete, whatever happens next.
    if os.path.exists(os.path.join(output_dir, STAMP_NAME)):
        os.remove(os.path.join(output_dir, STAMP_NAME))
    for folder, keep in ((images_dir, keep_images), (masks_dir, keep_masks)):
        for name in os.listdir(folder):
            if name not in keep:
                os.remove(os.path.join(folder, name))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _OUTPUT_DIR.value:
        raise app.UsageError("--output_dir is required")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before keras loads TensorFlow
    try:
        generate(_OUTPUT_DIR.value, _NUM_IMAGES.value, _SEED.value, _NUM_WORKERS.value)
    except FileExistsError as e:
        raise app.UsageError(str(e)) from None


def run() -> None:
    """Console-script entry point (isic-synth)."""
    app.run(main)


if __name__ == "__main__":
    run()
