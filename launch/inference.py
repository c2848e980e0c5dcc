"""Applying a trained model to images on disk, shared by `isic-evaluate` and `isic-predict`.

  load_model        a model directory (-> M/ISIC-UNet.keras) or a .keras file, checked
  load_image        a JPEG/PNG of any size and mode -> uint8 [S, S, 3], as the builder does
  load_full_image   the same file -> uint8 [H, W, 3] RGB at full size (figures, overlays)
  read_mask         an 8-bit (or 16-bit, palette, ...) mask -> uint8 [H, W] on the 0-255 scale
  predict           uint8 [B, S, S, 3] -> float32 probabilities [B, S, S]
  to_original_size  probabilities [S, S] -> [H, W] (bilinear), before any thresholding

Image preprocessing must match `preprocessing/load.py` pixel for pixel, or the model sees
other inputs at prediction time than in training: EXIF orientation applied; grayscale,
palette, RGBA, CMYK and 16-bit converted to 8-bit RGB; JPEGs decoded with DCT-domain
downscaling (Pillow `draft`) and box-resized to S x S without keeping the aspect ratio.
`preprocessing/load.py` only exposes `load_pair` (image and mask together), so the
single-image path is written here; tests/test_predict.py checks that both give identical
bytes for every supported kind of input.
"""

import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

# The file name launch/trainer.py exports (trainer.FINAL_MODEL; a test checks they agree).
# Not imported from there so that prediction does not load the training stack.
MODEL_FILE = "ISIC-UNet.keras"

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
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


def _open(path: str) -> Image.Image:
    """Opens and decodes an image; non-JPEGs are decoded here so damage raises early."""
    im = Image.open(path)
    if im.format != "JPEG":
        im.load()
    return im


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # Unreadable EXIF: keep the pixels as stored (as the builder does).
        return 1
    return value if value in _TRANSPOSE else 1


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im


def _sixteen_to_eight(path: str, im: Image.Image) -> np.ndarray:
    """uint8 [H, W] from a 16-bit grayscale image (value // 257: 65535 -> 255)."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{path}: {im.mode} values outside 0..65535 ({values.min()}.."
                         f"{values.max()}); save it as 8 or 16 bit")
    return (values // 257).astype(np.uint8)


def _to_rgb(path: str, im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        im = Image.fromarray(_sixteen_to_eight(path, im), "L")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ValueError(f"{path}: unsupported image mode {im.mode} ({e})") from None


def load_image(path: str, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Loads an image the way the TFRecord builder does.

    Returns:
      (uint8 [S, S, 3] RGB, (height, width) of the upright original).
    Raises:
      Whatever Pillow raises for unreadable files (OSError, SyntaxError, ...), and
      ValueError for unsupported modes.
    """
    with _open(path) as im:
        orientation = _orientation(im)
        width, height = im.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        box = None
        if im.format == "JPEG":
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale with both sides >= S; `box` is the
            # original extent in the reduced image (as preprocessing/load.py).
            drafted = im.draft("RGB", (image_size, image_size))
            box = drafted[1] if drafted else None
        im.load()
        small = _to_rgb(path, im).resize((image_size, image_size), Image.BOX, box=box)
    # Transposing the S x S result equals resizing the transposed original (box filter).
    return np.asarray(_upright(small, orientation)), (height, width)


def load_full_image(path: str) -> np.ndarray:
    """Loads an image upright at full size: uint8 [H, W, 3] RGB."""
    with _open(path) as im:
        orientation = _orientation(im)
        im.load()
        return np.asarray(_upright(_to_rgb(path, im), orientation))


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

    Bilinear (half-pixel centres), antialiased when shrinking so that a side smaller than S
    averages the map instead of sampling it; when enlarging, antialiasing changes nothing.
    Done before thresholding: thresholding first and enlarging a binary map would give
    staircase borders.
    """
    height, width = int(size[0]), int(size[1])
    p = tf.convert_to_tensor(probabilities, tf.float32)[..., None]  # [S, S, 1]
    resized = tf.image.resize(p, (height, width), method="bilinear", antialias=True)
    return resized.numpy()[..., 0]
