"""Ground-truth masks for scoring: the builder's mask rules plus the checks a user needs.

The mask decoder itself is preprocessing/decode.py (`decode.read_mask`, shared with the
builder); this adds what scoring needs on top: a message naming the folder to pass when
the file is missing, and a size check against the original the records describe.
"""

import numpy as np

from core import files
from core.errors import InputError
from core.errors import MissingInputError
from preprocessing import decode


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
    if not files.isfile(path):
        raise MissingInputError(
            f"mask {path} does not exist; pass the folder that holds the "
            "original masks (--data_source or --masks_dir)"
        )
    mask = decode.read_mask(path)
    if expected_size is not None and mask.shape != tuple(expected_size):
        raise InputError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but the records say "
            f"the original is {expected_size[1]}x{expected_size[0]}; is --data_source the folder "
            "the records were built from?"
        )
    return mask
