"""The pictures of the review page (report.html): one image with its outlines, as two
small JPEGs (numpy and Pillow only).

The picture is the model's S x S input (the pixels the confidence and the mask came
from), stretched back to the image's aspect ratio, with the predicted outline (magenta)
and the expert outline (green, when there is one) drawn at the display size. The masks
may be at any size (S x S or the original H x W): they are resized to the display size
with nearest neighbour, so their outlines stay one pixel wide lines. Drawing at the
display size keeps 2,000 images to a few tens of MB of page (docs/evaluation.md).
"""

import dataclasses
import io

import numpy as np
from PIL import Image

THUMB_PIXELS = 96  # longest side of a thumbnail
LARGE_PIXELS = 256  # longest side of the view a click opens (2x the usual 128 model input)
_QUALITY = (70, 80)  # JPEG quality of the thumbnail, of the large view
PREDICTION_RGB = (255, 0, 255)  # magenta, as cases.png
TRUTH_RGB = (0, 255, 0)  # green


@dataclasses.dataclass(frozen=True)
class Picture:
    """One image's JPEG bytes for the page: a thumbnail and a larger view."""

    thumb: bytes
    large: bytes
    thumb_size: tuple[int, int]  # (width, height) of the thumbnail in pixels


def display_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(width, height) with the longest side `longest` and the aspect ratio kept (>= 1)."""
    scale = longest / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def outline(mask: np.ndarray) -> np.ndarray:
    """bool [h, w] -> bool [h, w]: mask pixels with a 4-neighbour outside the mask (the
    image border counts as outside, so a lesion cut by the border is closed)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W] -> bool at `size` (width, height), nearest neighbour."""
    image = Image.fromarray(mask.astype(np.uint8) * np.uint8(255), "L")
    return np.asarray(image.resize(size, Image.NEAREST)) > 127


def _draw(image: np.ndarray, pred: np.ndarray, truth, longest: int, quality: int) -> tuple[bytes, tuple]:
    """JPEG bytes of `image` (uint8 [s, s, 3]) at the aspect of `pred`, outlines drawn."""
    size = display_size(*pred.shape, longest)
    picture = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))  # [h, w, 3]
    if truth is not None:
        picture[outline(_resized_mask(truth, size))] = TRUTH_RGB
    picture[outline(_resized_mask(pred, size))] = PREDICTION_RGB
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), size


def make(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> Picture:
    """The thumbnail and the large view of one image.

    Args:
      image: uint8 [s, s, 3], the model's input (any square size).
      pred: bool [H, W], the predicted mask at the size it was scored or written (its
        shape gives the aspect ratio).
      truth: bool [H', W'] (any size of the same aspect), or None (isic-predict).
    """
    thumb, size = _draw(image, pred, truth, THUMB_PIXELS, _QUALITY[0])
    large, _ = _draw(image, pred, truth, LARGE_PIXELS, _QUALITY[1])
    return Picture(thumb, large, size)
