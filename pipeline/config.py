"""Training-time augmentation options: each field's name, default and help, once.

`launch.training.config.TrainConfig` inherits these fields (so `isic-train` has one flat
set of flags), and `pipeline.augment.augment_batch` reads them from any AugmentConfig.
Standard library only.
"""

import dataclasses

from preprocessing.options import check_fields, option


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random transforms of training batches (image and mask together)."""
    augment: bool = option(True, "Flips, rotations, scale and colour jitter on training batches.")
    augment_strength: float = option(
        1.0, "Multiplies rotation (15 deg), zoom (+-10%) and colour jitter; 0 keeps only "
        "flips and 90-degree rotations.", lower_bound=0.0)

    def __post_init__(self):
        check_fields(self)
