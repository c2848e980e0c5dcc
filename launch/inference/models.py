"""Applying a trained model to images on disk, shared by `isic-evaluate` and `isic-predict`.

  load_model        a model directory (-> M/ISIC-UNet.keras) or a .keras file, checked
  load_image        a JPEG/PNG of any size and mode -> uint8 [S, S, 3], as the builder does
  load_full_image   the same file -> uint8 [H, W, 3] RGB at full size (figures, overlays)
  read_mask         an 8-bit (or 16-bit, palette, ...) mask -> uint8 [H, W] on the 0-255 scale
  scale             uint8 images -> float32 in [0, 1], as the input pipeline scales records
  predict           float32 [B, S, S, 3] in [0, 1] -> float32 probabilities [B, S, S]
  to_original_size  probabilities [S, S] -> [H, W] (bilinear), before any thresholding

Image preprocessing must match the builder's pixel for pixel, or the model sees other
inputs at prediction time than in training, so `load_image` is the builder's own
`preprocessing.load.load_image` (EXIF orientation, any mode to 8-bit RGB, DCT-domain JPEG
downscaling, box resize to S x S); tests/test_predict.py checks it against `load_pair`.
"""

import os

import keras
import numpy as np
from PIL import Image
from PIL import ImageOps

from preprocessing import load

# The file name launch/training/trainer.py exports (trainer.FINAL_MODEL; a test checks they agree).
# Not imported from there so that prediction does not load the training stack.
MODEL_FILE = "ISIC-UNet.keras"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def resolve_model_path(path: str) -> str:
    """Returns the .keras file meant by `path` (a model directory or a .keras file).

    Raises:
      FileNotFoundError: nothing usable at `path`; the message says what to pass instead.
    """
    if os.path.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
        hint = (f" (it has best/{MODEL_FILE}: pass --model {os.path.join(path, 'best')})"
                if os.path.isfile(os.path.join(path, "best", MODEL_FILE)) else "")
        raise FileNotFoundError(
            f"model directory {path} has no {MODEL_FILE}{hint}. isic-train writes it when "
            f"training ends; pass a finished model directory or a .keras file to --model")
    if os.path.isfile(path):
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


def load_image(path: str, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Loads an image exactly as the TFRecord builder does (preprocessing.load.load_image).

    Returns:
      (uint8 [S, S, 3] RGB, (height, width) of the upright original).
    Raises:
      preprocessing.load.BadPairError (a ValueError): unreadable, truncated or unsupported.
    """
    return load.load_image(path, image_size)


def _sixteen_to_eight(path: str, im: Image.Image) -> np.ndarray:
    """uint8 [H, W] from a 16-bit grayscale image (value // 257: 65535 -> 255, as the builder)."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{path}: {im.mode} values outside 0..65535 ({values.min()}.."
                         f"{values.max()}); save it as 8 or 16 bit")
    return (values // 257).astype(np.uint8)


def load_full_image(path: str) -> np.ndarray:
    """Loads an image upright at full size for display (figures, overlays): uint8 [H, W, 3].

    Same conversions as the builder (EXIF orientation, 16-bit // 257, any mode to RGB),
    without the resize.
    """
    with Image.open(path) as im:
        im.load()
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # Unreadable EXIF: the builder keeps the stored pixels too.
            upright = im
        if upright.mode in _SIXTEEN_BIT_MODES:
            upright = Image.fromarray(_sixteen_to_eight(path, upright), "L")
        return np.asarray(upright.convert("RGB"))


def read_mask(path: str, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads a ground-truth mask on the 8-bit scale (binarise with metrics.binarize_uint8_mask).

    Any mode is accepted as the builder accepts it: 16-bit -> value // 257, palette and
    colour -> luminance. Masks are label maps stored upright; EXIF is ignored.
    Args:
      path: the mask file.
      expected_size: (height, width) it must have, e.g. the manifest's original size.
    Returns:
      uint8 [H, W].
    Raises:
      FileNotFoundError: no such file. ValueError: unreadable, or not `expected_size`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask {path} does not exist; pass the folder that holds the "
                                "original masks (--data_source or --masks_dir)")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _SIXTEEN_BIT_MODES:
                mask = _sixteen_to_eight(path, im)
            else:
                mask = np.asarray(im if im.mode == "L" else im.convert("L"))
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read mask {path} ({type(e).__name__}: {e})") from None
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
    if batch_size and n < batch_size:
        pad = np.zeros((batch_size - n, *images.shape[1:]), np.float32)
        images = np.concatenate([images.astype(np.float32), pad])
    return np.asarray(model.predict_on_batch(images), np.float32)[:n, ..., 0]


def to_original_size(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes one probability map [S, S] to `size` (height, width): float32 [H, W].

    Bilinear (triangle filter, half-pixel centres), antialiased when shrinking so that a
    side smaller than S averages the map instead of sampling it: Pillow's BILINEAR on a
    float32 ("F") image, which equals tf.image.resize(..., "bilinear", antialias=True) to
    ~1e-5 and is 3x faster on CPU (27 vs 82 ms for 1600x1200). Done before thresholding:
    enlarging a thresholded map would give staircase borders.
    """
    height, width = int(size[0]), int(size[1])
    p = Image.fromarray(np.ascontiguousarray(probabilities, np.float32), "F")
    return np.asarray(p.resize((width, height), Image.BILINEAR))
