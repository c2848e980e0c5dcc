"""Segments every image of a folder into ISIC submission masks (`isic-predict`).

For each `IN/<ID>.jpg|.jpeg|.png` (any size and mode), writes `OUT/<ID>_segmentation.png`:
8-bit single channel ("L"), values 0 and 255, exactly the input's (upright) size, the
format the ISIC 2018 Task 1 challenge accepts. Images are prepared as the model's training
records were (launch/inference/models.py, with the colour constancy of its
preprocessing.json); the probability map is predicted at the model's S x S (averaged over
flips and rotations with `tta`), resized bilinearly to the original size, thresholded
(p > threshold) and post-processed as the config asks: launch/inference/segment.py, the
path isic-evaluate scores. With `overlays`, also `OUT/overlays/<ID>_overlay.jpg`: the
image with the prediction tinted red and outlined.

Unreadable images are reported by name and skipped; the caller decides the exit code.
Other files (hidden files, non-image extensions, ISIC `_superpixels.png`) are ignored and
counted.
"""

import os

import numpy as np
from PIL import Image

from core import files
from core import names
from core import progress as progress_lib
from core.errors import InputError
from core.errors import MissingInputError
from launch.inference import models
from launch.inference import segment
from launch.inference.config import PredictConfig
from pipeline import pixels
from preprocessing import decode

_IGNORED_SUFFIXES = ("_superpixels.png",)
OVERLAY_DIR = "overlays"
_TINT = np.array([255, 0, 0], np.float32)  # red
_TINT_ALPHA = 0.3


def list_images(input_dir: str) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Lists `input_dir` (not recursive).

    Returns:
      (image file names sorted, ignored names, problems [(name, reason)] for names that
       share an ID, e.g. X.jpg and X.png, which would write the same output).
    Raises:
      FileNotFoundError: `input_dir` is not a folder.
    """
    if not files.isdir(input_dir):
        raise MissingInputError(
            f"--input_dir {input_dir} is not a folder; pass the folder "
            "that holds the JPEG or PNG images to segment"
        )
    images, ignored = [], []
    for name in sorted(files.listdir(input_dir)):
        lower = name.lower()
        if (
            name.startswith(".")
            or not lower.endswith(names.IMAGE_EXTENSIONS)
            or lower.endswith(_IGNORED_SUFFIXES)
            or not files.isfile(os.path.join(input_dir, name))
        ):
            ignored.append(name)
        else:
            images.append(name)
    by_id = {}
    for name in images:
        by_id.setdefault(os.path.splitext(name)[0], []).append(name)
    clashes = {n for names in by_id.values() if len(names) > 1 for n in names}
    problems = [
        (
            n,
            f"another image has the ID {os.path.splitext(n)[0]!r} "
            f"({', '.join(by_id[os.path.splitext(n)[0]])}); rename one",
        )
        for n in sorted(clashes)
    ]
    return [n for n in images if n not in clashes], ignored, problems


def binary_mask_image(mask: np.ndarray) -> Image.Image:
    """bool [H, W] -> "L" image of 0 (background) and 255 (foreground)."""
    return Image.fromarray(mask.astype(np.uint8) * np.uint8(255), "L")


def _border(mask: np.ndarray, width: int) -> np.ndarray:
    """bool [H, W]: foreground pixels within `width` pixels of the background (4-neighbour
    erosion repeated `width` times; outside the image counts as background)."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image (uint8 [H, W, 3]) with `mask` (bool [H, W]) tinted red and outlined in
    yellow, the outline about 0.3% of the longest side wide: uint8 [H, W, 3]."""
    out = image.astype(np.float32)
    out[mask] = (1 - _TINT_ALPHA) * out[mask] + _TINT_ALPHA * _TINT
    out[_border(mask, max(1, round(max(mask.shape) / 300)))] = (255, 255, 0)
    return out.astype(np.uint8)


def _load_batch(input_dir, names, image_size, colour_constancy, failed):
    """Loads `names` at S x S; unreadable ones go to `failed`. Returns (names, uint8
    [B, S, S, 3], sizes)."""
    ok, images, sizes = [], [], []
    for name in names:
        try:
            image, size = decode.load_image(os.path.join(input_dir, name), image_size, colour_constancy)
        except decode.DecodeError as e:  # unreadable, truncated or unsupported: named, skipped
            failed.append((name, e.reason))
            continue
        ok.append(name)
        images.append(image)
        sizes.append(size)
    return ok, images, sizes


def _write(input_dir, output_dir, name, mask, overlays):
    """Writes one image's mask (bool [H, W]) and overlay (atomically); returns the mask path."""
    case_id = os.path.splitext(name)[0]
    path = os.path.join(output_dir, names.mask_name(case_id))
    with files.atomic_path(path) as tmp:
        binary_mask_image(mask).save(tmp)
    if overlays:
        picture = overlay(decode.load_full_image(os.path.join(input_dir, name)), mask)
        with files.atomic_path(os.path.join(output_dir, OVERLAY_DIR, f"{case_id}_overlay.jpg")) as tmp:
            Image.fromarray(picture).save(tmp, quality=90)
    return path


def predict_folder(
    model_path: str, input_dir: str, output_dir: str, config: PredictConfig, *, progress: bool = True
) -> dict:
    """Segments every image of `input_dir` into `output_dir` (see the module docstring).

    Returns:
      {"written": [mask paths], "failed": [(file name, reason)], "ignored": [file names],
       "model": the .keras path used, "output_dir": output_dir}.
    Raises:
      FileNotFoundError: no model, or `input_dir` is not a folder.
      ValueError: `input_dir` holds no JPEG or PNG image; unusable model.
      UserError: `output_dir` cannot be written (checked before any prediction).
    """
    names, ignored, failed = list_images(input_dir)
    if not names and not failed:
        raise InputError(
            f"--input_dir {input_dir} holds no .jpg, .jpeg or .png images "
            f"({len(ignored)} other entries ignored); pass the folder of the images"
        )
    model, resolved = models.load_model(model_path)
    size = models.model_image_size(model)
    colour_constancy = models.read_preprocessing(resolved)
    files.ensure_writable(os.path.join(output_dir, OVERLAY_DIR) if config.overlays else output_dir)
    written = []
    bar = progress_lib.Progress(len(names), unit="image", show=progress)
    for first in range(0, len(names), config.batch_size):
        batch_names = names[first : first + config.batch_size]
        ok, images, sizes = _load_batch(input_dir, batch_names, size, colour_constancy, failed)
        if ok:
            probabilities = segment.probabilities(
                model, pixels.to_unit_range(np.stack(images)), config, config.batch_size
            )
            for name, p, original in zip(ok, probabilities, sizes):
                mask = segment.to_mask(p, config, original)
                written.append(_write(input_dir, output_dir, name, mask, config.overlays))
        bar.advance(first + len(batch_names))
    return {
        "written": written,
        "failed": sorted(failed),
        "ignored": ignored,
        "model": resolved,
        "output_dir": output_dir,
    }
