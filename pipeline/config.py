"""Training-time augmentation options: each field's name, default and help, once.

`launch.training.config.TrainConfig` inherits these fields (so `isic-train` has one flat
set of flags), and `pipeline.augment.augment_batch` reads them from any AugmentConfig.
Every strength below is multiplied by `augment_strength` (see `augment.strengths`), and
0 turns that transform off. The defaults are the augmentation the shipped recipes were
chosen with; the ops added for lesions from other clinics (translate, gamma, blur, noise)
default to off. Standard library only.
"""

import dataclasses

from core.errors import UserError
from core.options import check_fields
from core.options import option

# Smallest zoom factor accepted, and the floor of zoom_min scaled by augment_strength:
# at 0.1 a 128-pixel image is 13 pixels wide, past any useful view of a lesion.
ZOOM_FLOOR = 0.1


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random transforms of training batches (geometry: image and mask; colour: image)."""

    augment: bool = option(True, "Flips, rotations, scale and colour jitter on training batches.")
    augment_strength: float = option(
        1.0,
        "Multiplies every strength below (rotation, zoom and translate ranges, colour, "
        "gamma, blur, noise); 0 keeps only flips and 90-degree rotations.",
        lower_bound=0.0,
    )
    rotation_degrees: float = option(15.0, "Rotation drawn uniformly in [-r, r] degrees.", lower_bound=0.0)
    zoom_min: float = option(
        0.9,
        "Smallest zoom factor (< 1 zooms out: 0.5 shows the lesion at half its size, "
        "the rest filled with the image's border colour, mask 0 there).",
        lower_bound=ZOOM_FLOOR,
    )
    zoom_max: float = option(
        1.1,
        "Largest zoom factor (> 1 zooms in); the factor is uniform in [zoom_min, zoom_max].",
        lower_bound=ZOOM_FLOOR,
    )
    translate: float = option(
        0.0,
        "Random shift of the sampled window, uniform in [-t, t] times the image size "
        "per axis, so that zoomed-in views are random crops, not centre crops.",
        lower_bound=0.0,
    )
    brightness: float = option(0.1, "Brightness: add a delta drawn in [-b, b].", lower_bound=0.0)
    contrast: float = option(
        0.1,
        "Contrast: scale by a factor in [1 - c, 1 + c] around each channel's mean (c <= 1).",
        lower_bound=0.0,
    )
    saturation: float = option(
        0.1, "Saturation: scale the chroma by a factor in [1 - s, 1 + s] (s <= 1).", lower_bound=0.0
    )
    hue: float = option(
        0.02, "Hue: rotate the chroma by [-h, h] turns (0.02 turns = 7.2 degrees).", lower_bound=0.0
    )
    gamma: float = option(
        0.0, "Gamma: pixel ** gamma with gamma log-uniform in [1 / (1 + g), 1 + g].", lower_bound=0.0
    )
    blur: float = option(
        0.0,
        "Gaussian blur of half the images (drawn per image), sigma uniform in [0, b] pixels.",
        lower_bound=0.0,
    )
    noise: float = option(
        0.0,
        "Additive Gaussian noise (to 3.45 std) with a standard deviation drawn per "
        "image in [0, n] (pixel values in [0, 1]).",
        lower_bound=0.0,
    )

    def __post_init__(self):
        check_fields(self)
        if self.zoom_min > self.zoom_max:
            raise UserError(f"--zoom_min must be <= --zoom_max; got {self.zoom_min} > {self.zoom_max}")
        for name in ("contrast", "saturation"):  # factors in [1 - c, 1 + c] stay >= 0
            if getattr(self, name) > 1:
                raise UserError(f"--{name} must be <= 1; got {getattr(self, name)!r}")
