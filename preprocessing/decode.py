"""Decoding image and mask files: the one place both the builder and inference use.

numpy and Pillow only (no TensorFlow): the builder's worker processes import it.

  prepare_image   an opened image file -> uint8 [S, S, 3]: the exact pixels a model sees,
                  in training records (preprocessing/load.py) and at inference
                  (launch/inference/models.py) alike
  load_image      a path -> (prepare_image's pixels, (height, width) of the upright original)
  load_full_image a path -> uint8 [H, W, 3] upright RGB at full size (figures, overlays)
  mask_to_gray    an opened mask file -> 8-bit "L" image, validated as the builder requires
  read_mask       a path -> uint8 [H, W] on the 8-bit scale (foreground > 128)
  shades_of_gray  colour constancy of a uint8 [H, W, 3] image

Image: EXIF orientation applied; grayscale, palette, RGBA (alpha dropped), CMYK and
16-bit inputs converted to 8-bit RGB (16-bit: value // 257). JPEGs are decoded with
DCT-domain downscaling (Pillow `draft`: 1/2, 1/4 or 1/8 scale, chosen so both sides stay
>= S), then resized to S x S with a box filter (each output pixel is the mean of its
footprint, the same rule as the mask, so image and mask agree at the lesion border). The
aspect ratio is not kept, as in the original ISIC script. Colour constancy, when asked
for, comes last (see `prepare_image`).

Mask: the modes of MASK_MODES, brought to the 8-bit scale (16-bit: value // 257; palette
and colour masks: their luminance); foreground is value > 128, as the ISIC scorer does. A
mask with values but none above 128 (a 0/1 label mask) is refused: it would be empty.
Masks are label maps stored upright: their EXIF orientation is ignored.
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from core import files
from core.errors import InputError

# File endings read as images, everywhere in the project.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Every mode a mask may have. Others (e.g. "F": float values have no agreed 0-255 scale)
# are refused by the builder and by evaluation alike.
MASK_MODES = ("L", "1", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", *SIXTEEN_BIT_MODES)
COLOUR_CONSTANCY_METHODS = ("none", "shades_of_gray")

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DecodeError(InputError):
    """A file that cannot be used: `file` is its path, `reason` says why."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ColourConstancy:
    """The colour normalisation applied to every image after resizing.

    Recorded by the builder as manifest["preprocessing"] and by the trainer as
    model_dir/preprocessing.json (`to_dict`), so inference applies the same one.
    """

    method: str = "none"  # one of COLOUR_CONSTANCY_METHODS
    p: int = 6  # the Minkowski norm of shades_of_gray

    def __post_init__(self):
        if self.method not in COLOUR_CONSTANCY_METHODS:
            raise ValueError(
                f"unknown colour constancy {self.method!r}; use one of {', '.join(COLOUR_CONSTANCY_METHODS)}"
            )
        if isinstance(self.p, bool) or not isinstance(self.p, int) or self.p < 1:
            raise ValueError(f"colour constancy p must be an integer >= 1, got {self.p!r}")

    def to_dict(self) -> dict:
        """{"colour_constancy": method, "colour_constancy_p": p}, as manifests record it."""
        return {"colour_constancy": self.method, "colour_constancy_p": self.p}

    @classmethod
    def from_dict(cls, values: dict | None) -> "ColourConstancy":
        """The inverse of `to_dict`; None or {} (records and models from before the option)
        mean no colour constancy."""
        values = values or {}
        return cls(values.get("colour_constancy", "none"), values.get("colour_constancy_p", 6))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> uint8 [H, W, 3] (the same array when method is "none")."""
        return shades_of_gray(image, self.p) if self.method == "shades_of_gray" else image


NO_COLOUR_CONSTANCY = ColourConstancy()


def shades_of_gray(image: np.ndarray, p: int = 6) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson and Trezzi, 2004): uint8 [H, W, 3] -> same.

    With x the pixel values as float64 in 0..255 and N the number of pixels:
      illuminant   e_c  = (sum over pixels of x_c ** p / N) ** (1 / p)     per channel c
      grey target  g    = sqrt((e_R**2 + e_G**2 + e_B**2) / 3)   (the grey of e's length)
      output       y_c  = clip(rint(x_c * g / e_c), 0, 255)       as uint8
    so the estimated illuminant becomes (g, g, g). p = 1 is Gray World, p -> inf max-RGB;
    p = 6 is the usual choice for dermoscopy (Barata et al., 2015). A channel that is zero
    everywhere has no illuminant to correct and stays zero; an all-black image is returned
    unchanged.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"shades_of_gray needs uint8 [H, W, 3], got {image.dtype} {image.shape}")
    x = image.astype(np.float64)
    illuminant = np.mean(x.reshape(-1, 3) ** p, axis=0) ** (1.0 / p)  # [3]
    if not illuminant.any():
        return image.copy()
    grey = np.sqrt(np.mean(illuminant**2))
    gain = np.where(illuminant > 0, grey / np.where(illuminant > 0, illuminant, 1.0), 1.0)
    return np.clip(np.rint(x * gain), 0, 255).astype(np.uint8)


def open_image(path: str, what: str = "image") -> Image.Image:
    """`Image.open` (lazy: pixels are decoded later); any failure is a DecodeError.

    A remote file (gs://...) is read whole first: Pillow seeks, which costs one request
    per seek on object storage."""
    try:
        return Image.open(path if files.is_local(path) else io.BytesIO(files.read_bytes(path)))
    except Exception as e:  # Pillow reports bad files with many exception types.
        raise DecodeError(path, f"cannot read {what} ({_describe(e)})") from None


def decoded(path: str, what: str, fn):
    """Runs a Pillow call that decodes pixels, turning any failure into a DecodeError."""
    try:
        return fn()
    except Exception as e:  # truncated data: OSError; broken chunks: SyntaxError, ...
        raise DecodeError(path, f"cannot decode {what} ({_describe(e)})") from None


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def exif_orientation(im: Image.Image) -> int:
    """The image's EXIF orientation, 1 (upright) when absent, invalid or unreadable.

    Non-JPEG files must be loaded first: only JPEG keeps its EXIF before the pixel data
    (and a failed decode must raise in `load`, not inside getexif()).
    """
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # Unreadable EXIF: the pixels decide; load() reports real damage.
        return 1
    return value if value in _TRANSPOSE else 1


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) after applying the EXIF orientation (5-8 swap the axes)."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def upright(im: Image.Image, orientation: int) -> Image.Image:
    """The image turned by its EXIF orientation (the same image when upright)."""
    return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im


def check_mask_size(
    mask_path: str,
    mask_size: tuple[int, int],
    image_path: str,
    stored_size: tuple[int, int],
    orientation: int,
) -> None:
    """Raises DecodeError unless the mask (width, height) is the upright image's size.

    `stored_size` is the image's (width, height) before its EXIF `orientation`.
    """
    width, height = upright_size(stored_size, orientation)
    if tuple(mask_size) == (width, height):
        return
    msg = (
        f"mask is {mask_size[0]}x{mask_size[1]} but image {os.path.basename(image_path)} "
        f"is {width}x{height} (width x height); a mask must have its image's pixel size"
    )
    if orientation in (5, 6, 7, 8) and tuple(mask_size) == tuple(stored_size):
        msg += (
            f" (the image is rotated by its EXIF orientation {orientation}; the mask "
            "matches the unrotated pixels: rotate the mask to match the upright image)"
        )
    raise DecodeError(mask_path, msg)


def prepare_image(
    im: Image.Image, image_size: int, colour_constancy: ColourConstancy = NO_COLOUR_CONSTANCY
) -> np.ndarray:
    """The pixels a model sees for an opened image file: uint8 [S, S, 3] RGB, upright.

    Decode (DCT-downscaled for JPEG), convert to RGB, box-resize to S x S, turn upright,
    then colour constancy. Colour constancy comes after the resize: scaling channels
    commutes with the (linear) box filter, so only the illuminant estimate differs from
    a full-size pass (a p-mean over S x S footprint means instead of over the original
    pixels) while the cost no longer grows with the original's size; the builder and
    inference both call this function, so their pixels are identical by construction.
    Raises:
      DecodeError: truncated data or an unsupported mode.
    """
    path = getattr(im, "filename", "") or "image"
    if im.format != "JPEG":
        decoded(path, "image", im.load)  # EXIF of other formats follows the pixel data
    orientation = exif_orientation(im)
    box = None
    if im.format == "JPEG":
        # draft() makes libjpeg decode at 1/2, 1/4 or 1/8 scale with both sides >= size;
        # `box` is the original extent in the reduced image's coordinates (fractional
        # when a side is not a multiple of the scale), so the resize stays aligned.
        drafted = im.draft("RGB", (image_size, image_size))
        box = drafted[1] if drafted else None
    decoded(path, "image", im.load)
    rgb = _to_rgb(path, im)
    small = decoded(path, "image", lambda: rgb.resize((image_size, image_size), Image.BOX, box=box))
    # Transposing the S x S result equals resizing the transposed original (the box
    # filter is symmetric), and costs nothing.
    return colour_constancy.apply(np.asarray(upright(small, orientation)))


def load_image(
    path: str, image_size: int, colour_constancy: ColourConstancy = NO_COLOUR_CONSTANCY
) -> tuple[np.ndarray, tuple[int, int]]:
    """`prepare_image` of the file at `path`.

    Returns:
      (uint8 [S, S, 3] RGB, (height, width) of the upright original).
    Raises:
      DecodeError: unreadable or truncated file, or unsupported mode.
    """
    with open_image(path) as im:
        if im.format != "JPEG":
            decoded(path, "image", im.load)
        width, height = upright_size(im.size, exif_orientation(im))
        return prepare_image(im, image_size, colour_constancy), (height, width)


def load_full_image(path: str) -> np.ndarray:
    """The image upright at full size for display (figures, overlays): uint8 [H, W, 3].

    The conversions of `prepare_image` (EXIF orientation, 16-bit // 257, any mode to
    RGB), without the resize and without colour constancy (pictures show the original).
    """
    with open_image(path) as im:
        decoded(path, "image", im.load)
        return np.asarray(upright(_to_rgb(path, im), exif_orientation(im)))


def _to_rgb(path: str, im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in SIXTEEN_BIT_MODES:
        im = Image.fromarray(_sixteen_to_eight(path, im), "L")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise DecodeError(path, f"unsupported image mode {im.mode} ({e})") from None


def _sixteen_to_eight(path: str, im: Image.Image) -> np.ndarray:
    """uint8 [H, W] from a 16-bit grayscale image (value // 257: 65535 -> 255)."""
    values = np.asarray(im).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DecodeError(
            path,
            f"{im.mode} values outside 0..65535 ({values.min()}..{values.max()}); save it as 8 or 16 bit",
        )
    return (values // 257).astype(np.uint8)


def mask_to_gray(im: Image.Image) -> tuple[Image.Image, list[int]]:
    """An opened mask file on the 8-bit scale: ("L" image [H, W] (foreground > 128), its
    256-bin histogram). The histogram is returned because it is the costly part of the
    check (~5 ms on a 4000x3000 mask, a tenth of a full-size pair's build) and the
    builder needs it again.

    Raises:
      DecodeError: truncated data, a mode outside MASK_MODES, or values but none above
        128 (the mask would be empty: a 0/1 label mask must be saved as 0/255).
    """
    path = getattr(im, "filename", "") or "mask"
    decoded(path, "mask", im.load)
    if im.mode not in MASK_MODES:
        raise DecodeError(path, f"unsupported mask mode {im.mode}; save masks as 8-bit grayscale PNG")
    raw_max = None
    if im.mode in SIXTEEN_BIT_MODES:
        raw_max = int(np.asarray(im).max(initial=0))
        gray = Image.fromarray(_sixteen_to_eight(path, im), "L")
    else:
        gray = im if im.mode == "L" else im.convert("L")
    histogram = gray.histogram()
    high = max((v for v, n in enumerate(histogram) if n), default=0)
    if high <= 128 and (high > 0 or (raw_max or 0) > 0):
        raise DecodeError(
            path,
            (
                f"no mask value is above 128 (max {raw_max if raw_max is not None else high}), so "
                "the mask would be empty; foreground must be > 128 on the 8-bit scale: save a "
                "0/1 label mask as 0/255"
            ),
        )
    return gray, histogram


def read_mask(path: str) -> np.ndarray:
    """The mask file at `path` on the 8-bit scale (`mask_to_gray`): uint8 [H, W].

    Raises:
      DecodeError: unreadable, truncated, unsupported mode or no value above 128.
    """
    with open_image(path, "mask") as im:
        return np.array(mask_to_gray(im)[0])
