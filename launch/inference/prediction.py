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

Beside the masks: `OUT/confidence.csv` (one row per mask: id, file, the per-image
confidence of config.confidence (launch/inference/confidence.py), check = 1 when it is
below config.check_below, then every confidence signal measured) and, with
config.report, `OUT/report.html` (launch/inference/review_page.py).

Unreadable images are reported by name and skipped; the caller decides the exit code.
Other files (hidden files, non-image extensions, ISIC `_superpixels.png`) are ignored and
counted.
"""

import csv
import os

import numpy as np
from PIL import Image

from core import files
from core import names
from core import progress as progress_lib
from core.errors import InputError
from core.errors import MissingInputError
from launch.inference import models
from launch.inference import review_page
from launch.inference import review_pictures
from launch.inference import segment
from launch.inference.config import PredictConfig
from pipeline import pixels
from preprocessing import decode

_IGNORED_SUFFIXES = ("_superpixels.png",)
OVERLAY_DIR = "overlays"
CONFIDENCE_FILE = "confidence.csv"
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
       "model": the .keras path used, "input_dir", "output_dir", and when any mask was
       written "confidence_csv" and (config.report) "report_html": their paths}.
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
    model, resolved = models.load_model(model_path, config.jit_compile)
    size = models.model_image_size(model)
    colour_constancy = models.read_preprocessing(resolved)
    files.ensure_writable(os.path.join(output_dir, OVERLAY_DIR) if config.overlays else output_dir)
    written, rows = [], []
    bar = progress_lib.Progress(len(names), unit="image", show=progress)
    for first in range(0, len(names), config.batch_size):
        batch_names = names[first : first + config.batch_size]
        ok, images, sizes = _load_batch(input_dir, batch_names, size, colour_constancy, failed)
        if ok:
            probabilities, signals = segment.predict(
                model, pixels.to_unit_range(np.stack(images)), config, config.batch_size
            )
            for i, (name, p, original) in enumerate(zip(ok, probabilities, sizes)):
                mask = segment.to_mask(p, config, original)
                written.append(_write(input_dir, output_dir, name, mask, config.overlays))
                rows.append(_row(name, {k: float(v[i]) for k, v in signals.items()}, config))
                if config.report:
                    rows[-1]["picture"] = review_pictures.make(images[i], mask)
        bar.advance(first + len(batch_names))
    report = {
        "written": written,
        "failed": sorted(failed),
        "ignored": ignored,
        "model": resolved,
        "input_dir": input_dir,
        "output_dir": output_dir,
    }
    _write_confidence(output_dir, rows, report, config)
    return report


def _row(name: str, signals: dict, config: PredictConfig) -> dict:
    """One image's confidence.csv row: id, file, confidence, check, confidence_<signal>."""
    row = {"id": os.path.splitext(name)[0], "file": name, "confidence": signals[config.confidence]}
    row["check"] = int(row["confidence"] < config.check_below)
    row.update({f"confidence_{k}": v for k, v in signals.items()})
    return row


def _write_confidence(output_dir: str, rows: list[dict], report: dict, config: PredictConfig) -> None:
    """confidence.csv and (config.report) report.html; adds their paths to `report`."""
    if not rows:
        return
    columns = [k for k in rows[0] if k != "picture"]
    path = os.path.join(output_dir, CONFIDENCE_FILE)
    with files.atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    report["confidence_csv"] = path
    if config.report:
        summary = {
            "model": report["model"],
            "input_dir": files.absolute(report["input_dir"]),
            "count": len(rows),
            **{k: getattr(config, k) for k in ("threshold", "tta", "fill_holes", "largest_component")},
            "confidence": {
                "signal": config.confidence,
                "check_below": config.check_below,
                "checked": sum(r["check"] for r in rows),
            },
        }
        title = f"isic-predict: {os.path.basename(os.path.normpath(report['output_dir']))}"
        report["report_html"] = review_page.write(
            os.path.join(output_dir, review_page.REPORT_FILE), summary, rows, title
        )
