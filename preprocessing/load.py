"""Loads and validates one image/mask pair from disk, resized to S x S.

This module only needs numpy and Pillow (no TensorFlow): it runs in the builder's worker
processes, which stay small and start fast. Decoding is preprocessing/decode.py's, the
same functions inference uses: the image is `decode.prepare_image` (EXIF orientation, any
mode to 8-bit RGB, DCT-domain JPEG downscaling, box resize, optional colour constancy),
so a record holds exactly the pixels a model sees at prediction time.

Mask: `decode.mask_to_gray` (any of decode.MASK_MODES on the 8-bit scale, foreground
> 128), then downsampled by area: an output pixel is foreground when at least half of its
footprint is (box average of the binary mask, then threshold at 0.5), so values are never
interpolated into non-binary results.
"""

import numpy as np
from PIL import Image

from core.errors import InputError
from preprocessing import decode
from preprocessing.pairs import Pair
from preprocessing.pairs import Problem


class BadPairError(InputError):
    """A pair that cannot be used; `problem` names the ID, the file and the reason."""

    def __init__(self, case_id: str, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.problem = Problem(case_id, file, reason)


def load_pair(
    pair: Pair, image_size: int, colour_constancy: decode.ColourConstancy = decode.NO_COLOUR_CONSTANCY
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Loads, validates and resizes one pair.

    Returns:
      image: uint8 [S, S, 3] RGB (`decode.prepare_image` with `colour_constancy`).
      mask: uint8 [S, S], values 0/1.
      original_size: (height, width) of the upright source image.
    Raises:
      BadPairError: unreadable or truncated file, unsupported mode, size mismatch, or a
        mask with values but none above 128.
    """
    try:
        with decode.open_image(pair.image_path) as image:
            if image.format != "JPEG":
                decode.decoded(pair.image_path, "image", image.load)
            orientation = decode.exif_orientation(image)
            width, height = decode.upright_size(image.size, orientation)
            # The cheap checks first: the mask's size before the image's pixels.
            with decode.open_image(pair.mask_path, "mask") as mask:
                decode.check_mask_size(pair.mask_path, mask.size, pair.image_path, image.size, orientation)
                small_mask = _small_mask(mask, image_size)
            small_image = decode.prepare_image(image, image_size, colour_constancy)
    except decode.DecodeError as e:
        raise BadPairError(pair.case_id, e.file, e.reason) from None
    return small_image, small_mask, (height, width)


def try_load_pair(task: tuple):
    """`load_pair` for the worker pool: task is (pair, image_size) or (pair, image_size,
    colour_constancy); returns ((image, mask, original_size), None) or (None, Problem), so
    one bad pair does not abort the others."""
    try:
        return load_pair(*task), None
    except BadPairError as e:
        return None, e.problem


def _small_mask(im: Image.Image, size: int) -> np.ndarray:
    """Binarises at > 128 (8-bit scale) and area-downsamples: uint8 [S, S] of 0/1."""
    gray, histogram = decode.mask_to_gray(im)  # histogram: 256 counts
    # Foreground 255 / background 0 (ISIC masks already are: skip that full-size pass),
    # then the box filter gives 255 x (foreground fraction of each footprint); >= 128
    # means at least half.
    binary = gray if not any(histogram[1:255]) else gray.point(lambda v: 255 if v > 128 else 0)
    return np.asarray(binary.resize((size, size), Image.BOX).point(lambda v: 1 if v >= 128 else 0))
