"""Loads and validates one image/mask pair from disk, resized to S x S.

This module only needs numpy and Pillow (no TensorFlow): it runs in the builder's worker
processes, which stay small and start fast.

Image: EXIF orientation applied; grayscale, palette, RGBA (alpha dropped), CMYK and
16-bit inputs converted to 8-bit RGB. JPEGs are decoded with DCT-domain downscaling
(Pillow `draft`: 1/2, 1/4 or 1/8 scale, chosen so both sides stay >= S), then resized to
S x S with a box filter (each output pixel is the mean of its footprint, the same rule as
the mask, so image and mask agree at the lesion border). The aspect ratio is not kept, as
in the original ISIC script; `original_size` lets evaluation map back.

Mask: any mode or bit depth is brought to the 8-bit scale (16-bit: value // 257; palette
and colour masks: their luminance), then foreground = value > 128, as the ISIC scorer does.
It is downsampled by area: an output pixel is foreground when at least half of its
footprint is (box average of the binary mask, then threshold at 0.5), so values are never
interpolated into non-binary results.
"""

import numpy as np
from PIL import Image

from preprocessing.pairs import Pair, Problem

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadPairError(ValueError):
    """A pair that cannot be used; `problem` names the ID, the file and the reason."""

    def __init__(self, case_id: str, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.problem = Problem(case_id, file, reason)


def load_pair(pair: Pair, image_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Loads, validates and resizes one pair.

    Returns:
      image: uint8 [S, S, 3] RGB.
      mask: uint8 [S, S], values 0/1.
      original_size: (height, width) of the upright source image.
    Raises:
      BadPairError: unreadable or truncated file, unsupported mode, size mismatch, or a
        mask with values but none above 128.
    """
    with _open(pair.case_id, pair.image_path, "image") as image:
        if image.format != "JPEG":
            # Only JPEG keeps its EXIF before the pixel data; others must be decoded
            # first (and a failed decode must raise here, not inside getexif()).
            _decode(pair.case_id, pair.image_path, "image", image.load)
        orientation = _orientation(image)
        width, height = _upright_size(image.size, orientation)
        with _open(pair.case_id, pair.mask_path, "mask") as mask:
            # Masks are label maps stored upright: their EXIF orientation is ignored.
            if mask.size != (width, height):
                raise BadPairError(pair.case_id, pair.mask_path, _size_message(
                    mask.size, (width, height), image.size, orientation, pair.image_file))
            small_mask = _small_mask(pair, mask, image_size)
        small_image = _small_image(pair.case_id, pair.image_path, image, image_size)
    return np.asarray(_upright(small_image, orientation)), np.asarray(small_mask), (height, width)


def load_image(path: str, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Loads one image exactly as `load_pair` does (same bytes), e.g. for inference.

    Returns:
      (uint8 [S, S, 3] RGB, (height, width) of the upright original).
    Raises:
      BadPairError: unreadable or truncated file, or unsupported mode.
    """
    with _open("", path, "image") as image:
        if image.format != "JPEG":
            _decode("", path, "image", image.load)
        orientation = _orientation(image)
        width, height = _upright_size(image.size, orientation)
        small_image = _small_image("", path, image, image_size)
    return np.asarray(_upright(small_image, orientation)), (height, width)


def try_load_pair(task: tuple[Pair, int]):
    """`load_pair` for the worker pool: returns ((image, mask, original_size), None) or
    (None, Problem), so one bad pair does not abort the others."""
    pair, image_size = task
    try:
        return load_pair(pair, image_size), None
    except BadPairError as e:
        return None, e.problem


def _open(case_id: str, path: str, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except Exception as e:  # Pillow reports bad files with many exception types.
        raise BadPairError(case_id, path, f"cannot read {what} ({_describe(e)})") from None


def _decode(case_id: str, path: str, what: str, fn):
    """Runs a Pillow call that decodes pixels, turning any failure into a BadPairError."""
    try:
        return fn()
    except Exception as e:  # truncated data: OSError; broken chunks: SyntaxError, ...
        raise BadPairError(case_id, path, f"cannot decode {what} ({_describe(e)})") from None


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # Unreadable EXIF: the pixels decide; load() reports real damage.
        return 1
    return value if value in _TRANSPOSE else 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation (5-8 swap the axes)."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    # Transposing the S x S result equals resizing the transposed original (the box
    # filter is symmetric), and costs nothing.
    return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im


def _size_message(mask_size, image_size, stored_size, orientation, image_file) -> str:
    msg = (f"mask is {mask_size[0]}x{mask_size[1]} but image {image_file} is "
           f"{image_size[0]}x{image_size[1]} (width x height); a mask must have its "
           "image's pixel size")
    if orientation in (5, 6, 7, 8) and mask_size == stored_size:
        msg += (f" (the image is rotated by its EXIF orientation {orientation}; the mask "
                "matches the unrotated pixels: rotate the mask to match the upright image)")
    return msg


def _small_image(case_id: str, path: str, im: Image.Image, size: int) -> Image.Image:
    """Decodes (DCT-downscaled for JPEG) and box-resizes to RGB S x S (stored orientation)."""
    box = None
    if im.format == "JPEG":   # (other formats are already loaded by load_pair)
        # draft() makes libjpeg decode at 1/2, 1/4 or 1/8 scale with both sides >= size;
        # `box` is the original extent in the reduced image's coordinates (fractional
        # when a side is not a multiple of the scale), so the resize stays aligned.
        drafted = im.draft("RGB", (size, size))
        box = drafted[1] if drafted else None
    _decode(case_id, path, "image", im.load)
    rgb = _to_rgb(case_id, path, im)
    return _decode(case_id, path, "image", lambda: rgb.resize((size, size), Image.BOX, box=box))


def _to_rgb(case_id: str, path: str, im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        im = Image.fromarray(_sixteen_to_eight(case_id, path, im), "L")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise BadPairError(case_id, path, f"unsupported image mode {im.mode} ({e})") from None


def _sixteen_to_eight(case_id: str, path: str, im: Image.Image) -> np.ndarray:
    """uint8 [H, W] from a 16-bit grayscale image (value // 257: 65535 -> 255)."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise BadPairError(case_id, path, f"{im.mode} values outside 0..65535 "
                           f"({values.min()}..{values.max()}); save it as 8 or 16 bit")
    return (values // 257).astype(np.uint8)


def _small_mask(pair: Pair, im: Image.Image, size: int) -> Image.Image:
    """Binarises at > 128 (8-bit scale) and area-downsamples to 0/1 'L' S x S."""
    _decode(pair.case_id, pair.mask_path, "mask", im.load)
    if im.mode in _SIXTEEN_BIT_MODES:
        raw_max = int(np.asarray(im).max(initial=0))
        gray = Image.fromarray(_sixteen_to_eight(pair.case_id, pair.mask_path, im), "L")
    elif im.mode in ("L", "1", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        raw_max = None
        gray = im if im.mode == "L" else im.convert("L")
    else:
        raise BadPairError(pair.case_id, pair.mask_path,
                           f"unsupported mask mode {im.mode}; save masks as 8-bit grayscale PNG")
    histogram = gray.histogram()                                    # 256 counts
    high = max(v for v in range(256) if histogram[v])
    if high <= 128 and (high > 0 or (raw_max or 0) > 0):
        raise BadPairError(pair.case_id, pair.mask_path, (
            f"no mask value is above 128 (max {raw_max if raw_max is not None else high}), so "
            "the mask would be empty; foreground must be > 128 on the 8-bit scale: save a "
            "0/1 label mask as 0/255"))
    # Foreground 255 / background 0 (ISIC masks already are: skip that full-size pass),
    # then the box filter gives 255 x (foreground fraction of each footprint); >= 128
    # means at least half.
    binary = gray if not any(histogram[1:255]) else gray.point(lambda v: 255 if v > 128 else 0)
    return binary.resize((size, size), Image.BOX).point(lambda v: 1 if v >= 128 else 0)
