"""Options of `isic-synth` and `isic-preprocess`: each field's name, default and help, once.

No TensorFlow (decode.py brings numpy and Pillow): the commands build their flags from
these fields before anything imports TensorFlow, and the build's 'spawn' workers import
this module too.
"""

import dataclasses

from core.errors import UserError
from core.options import check_fields
from core.options import option
from preprocessing import decode
from preprocessing import splits


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """`isic-synth`: a synthetic dermoscopy-like dataset (see preprocessing/synth.py)."""

    num_images: int = option(400, "Number of image/mask pairs.", lower_bound=1)
    seed: int = option(0, "Generator seed; pair i depends only on (seed, i).")
    num_workers: int | None = option(
        None,
        "Drawing processes (default: all available CPUs). Never changes the output bytes.",
        lower_bound=1,
    )

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """`isic-preprocess`: how image/mask folders become records (see preprocessing/build.py).

    The input and output folders are not part of it: the same build may be moved.
    """

    image_size: int = option(128, "Records hold image_size x image_size images and masks.", lower_bound=1)
    splits: str = option(
        "0.8,0.1,0.1",
        "train,val,test fractions summing to 1 (zeros "
        "allowed, e.g. 0,0,1 for a test-only set). Counts are exact "
        "(largest-remainder rounding).",
    )
    seed: int = option(0, "Split seed: the same IDs and seed give the same splits.")
    num_workers: int | None = option(
        None,
        "Decoding processes (default: all available "
        "CPUs; 1: no subprocesses). Never changes the output "
        "bytes.",
        lower_bound=1,
    )
    num_shards: int | None = option(
        None,
        "Shards per split, capped at the split's record count (default: min(16, max(8, ceil(n/64)))).",
        lower_bound=1,
    )
    overwrite: bool = option(
        False, "Replace an existing build in --output_dir (needed when inputs or flags changed)."
    )
    skip_bad: bool = option(
        False, "Leave out bad pairs (listed, and recorded in manifest.json) instead of failing."
    )
    colour_constancy: str = option(
        decode.NO_COLOUR_CONSTANCY.method,
        "Colour normalisation of every image after "
        "resizing: none, or shades_of_gray (Shades of Gray with --colour_constancy_p). "
        "Recorded in manifest.json, so training, evaluation and prediction apply the same.",
        choices=decode.COLOUR_CONSTANCY_METHODS,
    )
    colour_constancy_p: int = option(
        decode.NO_COLOUR_CONSTANCY.p,
        "Minkowski norm p of Shades of Gray (1: Gray World; large p: max-RGB).",
        lower_bound=1,
    )

    def __post_init__(self):
        check_fields(self)
        try:
            splits.parse_fractions(self.splits)
        except ValueError as e:
            raise UserError(f"--splits: {e}") from None

    @property
    def colour(self) -> decode.ColourConstancy:
        """The colour constancy every image gets (what load.load_pair takes)."""
        return decode.ColourConstancy(self.colour_constancy, self.colour_constancy_p)

    @property
    def fractions(self) -> tuple[float, float, float]:
        """(train, val, test) parsed from `splits` (validated when the config was made)."""
        return splits.parse_fractions(self.splits)
