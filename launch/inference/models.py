"""Applying a trained model to images on disk, shared by `isic-evaluate` and `isic-predict`.

  load_model        a model directory (-> M/ISIC-UNet.keras) or a .keras file, checked
  read_preprocessing  the colour constancy the model was trained with (preprocessing.json)
  load_image        a JPEG/PNG of any size and mode -> uint8 [S, S, 3], as the builder does
  load_full_image   the same file -> uint8 [H, W, 3] RGB at full size (figures, overlays)
  read_mask         an 8-bit (or 16-bit, palette, ...) mask -> uint8 [H, W] on the 0-255 scale
  scale             uint8 images -> float32 in [0, 1], as the input pipeline scales records
  predict           float32 [B, S, S, 3] in [0, 1] -> float32 probabilities [B, S, S]
  to_original_size  probabilities [S, S] -> [H, W] (bilinear), before any thresholding
  ensure_writable   an output folder, checked before any work
  Progress          the progress bar (images and images/s) both commands show

Image preprocessing must match the builder's pixel for pixel, or the model sees other
inputs at prediction time than in training: both call preprocessing/decode.py
(`decode.prepare_image`), with the colour constancy the model's preprocessing.json
records; tests/test_predict.py checks it against `load.load_pair`.
"""

import json
import os
import tempfile
import time
import zipfile

import keras
import numpy as np
from PIL import Image

from preprocessing import decode
from preprocessing import manifest
from preprocessing.options import UserError

# The file name the trainer exports (launch/training/report.py FINAL_MODEL; a test checks they agree).
# Not imported from there so that prediction does not load the training stack.
MODEL_FILE = "ISIC-UNet.keras"
# Written by the trainer into the model directory: the records' manifest["preprocessing"].
PREPROCESSING_FILE = manifest.PREPROCESSING_FILE


def resolve_model_path(path: str) -> str:
    """Returns the .keras file meant by `path` (a model directory or a .keras file).

    Raises:
      FileNotFoundError: nothing usable at `path`; the message says what to pass instead.
    """
    if os.path.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            parent = os.path.dirname(os.path.abspath(path))
            beside = (f"pass {parent} (its model directory) or {os.path.join(parent, MODEL_FILE)}"
                      if os.path.isfile(os.path.join(parent, MODEL_FILE))
                      else f"pass a model directory from isic-train or its {MODEL_FILE}")
            raise FileNotFoundError(
                f"--model {path} is a TensorFlow SavedModel (for TF Serving or "
                f"tf.saved_model.load); isic-evaluate and isic-predict need the Keras model: {beside}")
        hint = (f" (it has best/{MODEL_FILE}: pass --model {os.path.join(path, 'best')})"
                if os.path.isfile(os.path.join(path, "best", MODEL_FILE)) else "")
        raise FileNotFoundError(
            f"model directory {path} has no {MODEL_FILE}{hint}. isic-train writes it when "
            f"training ends; pass a finished model directory or a .keras file to --model")
    if os.path.isfile(path):
        if path.endswith((".h5", ".hdf5")):
            raise FileNotFoundError(
                f"--model {path} is a Keras HDF5 (.h5) file, a format these commands do not "
                "read; pass a model directory from isic-train or a .keras file (convert with "
                "keras.models.load_model(path).save('model.keras'))")
        if not path.endswith(".keras"):
            raise FileNotFoundError(f"--model {path} is not a .keras file; pass a model "
                                    f"directory from isic-train or its {MODEL_FILE}")
        return path
    raise FileNotFoundError(f"model {path} does not exist; pass a model directory from "
                            f"isic-train (e.g. runs/unet or runs/unet/best) or a .keras file")


def load_model(path: str) -> tuple[keras.Model, str]:
    """Loads a segmentation model for inference.

    Returns:
      (model mapping float32 [B, S, S, 3] in [0, 1] to probabilities [B, S, S, 1],
       the .keras path it came from).
    Raises:
      FileNotFoundError: see `resolve_model_path`.
      ValueError: the file is not a loadable Keras model, or has other input/output shapes.
    """
    resolved = resolve_model_path(path)
    # A .keras file is a zip archive whose directory is at its end: a file cut short (a
    # full disk, an interrupted copy) has none, and Keras would report it as "File not
    # found" (keras/src/saving/saving_api.py:214, after zipfile.is_zipfile said no).
    if not zipfile.is_zipfile(resolved):
        raise ValueError(
            f"{resolved} is not a complete .keras file ({os.path.getsize(resolved)} bytes, not "
            "a zip archive: cut short or damaged). Write it again: run the same isic-train "
            "command on its model directory (a finished run re-exports from its last "
            "checkpoint), or pass another model such as <model_dir>/best") from None
    try:
        model = keras.models.load_model(resolved, compile=False)
    except Exception as e:  # Keras reports broken archives with many exception types.
        raise ValueError(f"cannot load the model {resolved} ({type(e).__name__}: {e}); "
                         "it may be truncated: re-export it, or use another checkpointed model") from None
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if (len(in_shape) != 4 or in_shape[3] != 3 or in_shape[1] is None or in_shape[1] != in_shape[2]
            or out_shape[1:] != (in_shape[1], in_shape[2], 1)):
        raise ValueError(f"{resolved} maps {in_shape} to {out_shape}; expected a segmentation "
                         "model mapping [B, S, S, 3] images to [B, S, S, 1] probabilities")
    return model, resolved


def model_image_size(model: keras.Model) -> int:
    """S, the square input size the model was built for."""
    return int(model.input_shape[1])


def read_preprocessing(model_path: str) -> decode.ColourConstancy:
    """The colour constancy a model was trained with, from its preprocessing.json.

    The file is looked for next to the .keras file `model_path` resolves to, then in that
    folder's parent (runs/unet/best/ISIC-UNet.keras -> runs/unet/preprocessing.json).
    None found: no colour constancy (models from before the option).
    Raises:
      FileNotFoundError: see `resolve_model_path`.
      ValueError: the file is not valid JSON or names an unknown method.
    """
    folder = os.path.dirname(os.path.abspath(resolve_model_path(model_path)))
    for candidate in (os.path.join(folder, PREPROCESSING_FILE),
                      os.path.join(os.path.dirname(folder), PREPROCESSING_FILE)):
        if os.path.isfile(candidate):
            try:
                with open(candidate) as f:
                    return decode.ColourConstancy.from_dict(json.load(f))
            except (OSError, ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{candidate} is not a usable preprocessing record ({e}); "
                                 "it is written by isic-train: restore it from the run") from None
    return decode.NO_COLOUR_CONSTANCY


def load_image(path: str, image_size: int,
               colour_constancy: decode.ColourConstancy = decode.NO_COLOUR_CONSTANCY
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """Loads an image exactly as the TFRecord builder does (`decode.load_image`).

    Returns:
      (uint8 [S, S, 3] RGB, (height, width) of the upright original).
    Raises:
      decode.DecodeError (a ValueError): unreadable, truncated or unsupported.
    """
    return decode.load_image(path, image_size, colour_constancy)


def load_full_image(path: str) -> np.ndarray:
    """Loads an image upright at full size for display: uint8 [H, W, 3] (`decode.load_full_image`)."""
    return decode.load_full_image(path)


def read_mask(path: str, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads a ground-truth mask on the 8-bit scale (binarise with metrics.binarize_uint8_mask).

    The builder's rules (`decode.read_mask`): the modes of decode.MASK_MODES, 16-bit ->
    value // 257, palette and colour -> luminance, and a mask with values but none above
    128 is refused. Masks are label maps stored upright; EXIF is ignored.
    Args:
      path: the mask file.
      expected_size: (height, width) it must have, e.g. the manifest's original size.
    Returns:
      uint8 [H, W].
    Raises:
      FileNotFoundError: no such file. ValueError: unusable, or not `expected_size`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask {path} does not exist; pass the folder that holds the "
                                "original masks (--data_source or --masks_dir)")
    mask = decode.read_mask(path)
    if expected_size is not None and mask.shape != tuple(expected_size):
        raise ValueError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but the records say "
            f"the original is {expected_size[1]}x{expected_size[0]}; is --data_source the folder "
            "the records were built from?")
    return mask


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 in [0, 1], as the input pipeline scales records (x / 255)."""
    return images.astype(np.float32) / np.float32(255.0)


def predict(model: keras.Model, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Probabilities of a batch: float32 [B, S, S, 3] in [0, 1] -> float32 [B, S, S].

    A batch smaller than `batch_size` (the last one) is padded with zeros to it, so the
    predict function is traced for one shape only.
    """
    n = images.shape[0]
    images = np.ascontiguousarray(images, np.float32)
    if batch_size and n < batch_size:
        pad = np.zeros((batch_size - n, *images.shape[1:]), np.float32)
        images = np.concatenate([images, pad])
    return np.asarray(model.predict_on_batch(images), np.float32)[:n, ..., 0]


def to_original_size(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes one probability map [S, S] to `size` (height, width): float32 [H, W].

    Bilinear (triangle filter, half-pixel centres), antialiased when shrinking so that a
    side smaller than S averages the map instead of sampling it: Pillow's BILINEAR on a
    float32 ("F") image, which equals tf.image.resize(..., "bilinear", antialias=True) to
    ~1e-5 and is faster on CPU (docs/performance.md). Done before thresholding: enlarging
    a thresholded map would give staircase borders.
    """
    height, width = int(size[0]), int(size[1])
    p = Image.fromarray(np.ascontiguousarray(probabilities, np.float32), "F")
    return np.asarray(p.resize((width, height), Image.BILINEAR))


def ensure_writable(folder: str) -> None:
    """Creates `folder` and checks that files can be written in it, before any work.

    Raises:
      UserError: the folder cannot be created or written to (the message names it).
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to the output folder {folder} ({e.strerror or e}); "
                        "pass an --output_dir you can write to") from None


class Progress:
    """A progress bar over images (keras Progbar) that also shows images per second."""

    def __init__(self, count: int, show: bool = True):
        self._bar = keras.utils.Progbar(count, stateful_metrics=("img/s",),
                                        verbose=1 if show else 0, unit_name="image")
        self._start = time.perf_counter()

    def advance(self, done: int) -> None:
        """Shows `done` images finished."""
        rate = done / max(time.perf_counter() - self._start, 1e-9)
        self._bar.update(done, values=[("img/s", rate)])
