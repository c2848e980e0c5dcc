"""Options of `isic-synth` and `isic-preprocess`: each field's name, default and help, once.

Standard library only: the commands build their flags from these fields before anything
imports TensorFlow, and the build's 'spawn' workers import this module too.
"""

import dataclasses

from preprocessing.options import UserError, check_fields, option


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """`isic-synth`: a synthetic dermoscopy-like dataset (see preprocessing/synth.py)."""
    num_images: int = option(400, "Number of image/mask pairs.", lower_bound=1)
    seed: int = option(0, "Generator seed; pair i depends only on (seed, i).")
    num_workers: int | None = option(None, "Drawing processes (default: all available CPUs). "
                                     "Never changes the output bytes.", lower_bound=1)

    def __post_init__(self):
        check_fields(self)
