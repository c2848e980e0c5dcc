"""Options of `isic-evaluate` and `isic-predict`: each field's name, default and help, once.

The two commands turn probability maps into masks the same way, so those options live in
one base class, `InferenceConfig`; each command adds its own. Standard library only: the
commands build their flags from these fields before anything imports TensorFlow.

The path flags (--model, --data_dir, --input_dir, --output_dir, ...) are not options:
they are the arguments of the library functions (`evaluation.evaluate(model, data_dir,
config)`), since the same settings apply to any folder.
"""

import dataclasses

from core.errors import UserError
from core.options import check_fields
from core.options import option
from preprocessing.splits import SPLITS

_BATCH_HELP = "Images per prediction batch."
_REPORT_HELP = (
    "Write report.html: one self-contained page (images inlined, no network) with the "
    "summary and every image as a thumbnail with its outline, sortable by confidence."
)
# The default of --check_below: the 20th percentile of the chosen confidence on the
# validation split, rounded down to 0.05 (the rule and the numbers: docs/evaluation.md).
_CHECK_BELOW = 0.5
_CHECK_HELP = "report.html and confidence.csv mark an image 'check' when its confidence is below this."
_JIT_HELP = (
    "Compile the model's forward pass with XLA. auto = on for GPUs (as Keras' predict does), "
    "off on CPUs, where TensorFlow's oneDNN graph measured faster (docs/performance.md); "
    "the probabilities are the same either way to ~1e-5."
)

# The per-image confidence signals (launch/inference/confidence.py computes them; the
# names live here so that --help needs no TensorFlow). TTA_SIGNALS need the 8 TTA passes.
CONFIDENCE_SIGNALS = ("expected_jaccard", "boundary_margin", "certain_share", "tta_agreement")
TTA_SIGNALS = ("tta_agreement",)
JIT_COMPILE = ("auto", "on", "off")  # --jit_compile of isic-evaluate and isic-predict (not isic-export)


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """From probabilities to a mask: threshold, test-time augmentation, post-processing.

    Order (launch/inference/segment.py): probabilities at the model's S x S (averaged over
    the 8 flips and rotations with `tta`), resized to the scored or written size,
    thresholded, holes filled, then the largest region kept.

    The defaults are what scored best on the combined ISIC 2017 validation split (200
    images from many clinics, docs/recipes.md): TTA and both post-processing steps on
    (thresholded Jaccard 0.748 -> 0.759); `--notta --nofill_holes --nolargest_component`
    gives the network's raw mask.
    """

    threshold: float = option(
        0.5, "A pixel is foreground where its probability is > threshold (0.5 in the ISIC challenge)."
    )
    tta: bool = option(
        True,
        "Test-time augmentation: average each image's probabilities over "
        "its 8 flips and 90-degree rotations (each turned back) before "
        "thresholding; 8 times the prediction work.",
    )
    fill_holes: bool = option(
        True,
        "Fill holes: background regions of the thresholded mask "
        "that do not reach the image border become lesion (ISIC ground "
        "truth has no holes).",
    )
    largest_component: bool = option(
        True,
        "Keep only the largest connected region "
        "(8-connected) of the thresholded mask, after any hole "
        "filling (ISIC ground truth is one region).",
    )
    confidence: str = option(
        "certain_share",
        "The per-image confidence written beside each mask (per_image.csv, "
        "confidence.csv, report.html, the exported graph): computed from the "
        "probability map, chosen on the validation split (docs/evaluation.md). "
        "tta_agreement needs --tta.",
        choices=CONFIDENCE_SIGNALS,
    )

    def __post_init__(self):
        check_fields(self)
        if not 0.0 <= self.threshold < 1.0:
            raise UserError(f"--threshold must be in [0, 1), got {self.threshold}")
        if self.confidence in TTA_SIGNALS and not self.tta:
            raise UserError(
                f"--confidence={self.confidence} compares the 8 TTA passes and needs --tta; "
                "with --notta pass another --confidence, e.g. expected_jaccard"
            )


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(InferenceConfig):
    """`isic-evaluate`: scores against ground truth (launch/inference/evaluation.py)."""

    split: str = option("test", "With --data_dir: the split to score.", choices=SPLITS)
    full_resolution: bool = option(
        False,
        "With --data_dir: resize each probability map to its image's original size "
        "before thresholding and compare with the original mask from the source folder (the "
        "challenge's numbers). Default: score at the records' size (fast). A folder given "
        "without --data_dir is always scored at full resolution.",
    )
    batch_size: int = option(32, _BATCH_HELP, lower_bound=1)
    report: bool = option(True, _REPORT_HELP)
    check_below: float = option(_CHECK_BELOW, _CHECK_HELP, lower_bound=0.0, upper_bound=1.0)
    jit_compile: str = option("auto", _JIT_HELP, choices=JIT_COMPILE)


@dataclasses.dataclass(frozen=True)
class PredictConfig(InferenceConfig):
    """`isic-predict`: masks for a folder of images (launch/inference/prediction.py)."""

    overlays: bool = option(
        False,
        "Also write overlays/<ID>_overlay.jpg: the image with the predicted lesion tinted and outlined.",
    )
    batch_size: int = option(16, _BATCH_HELP, lower_bound=1)
    report: bool = option(True, _REPORT_HELP)
    check_below: float = option(_CHECK_BELOW, _CHECK_HELP, lower_bound=0.0, upper_bound=1.0)
    jit_compile: str = option("auto", _JIT_HELP, choices=JIT_COMPILE)
