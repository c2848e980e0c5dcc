"""From model inputs to masks: the one path `isic-evaluate` and `isic-predict` share.

  probabilities   float32 [B, S, S, 3] in [0, 1] -> float32 [B, S, S] (mean over the 8
                  flips and rotations with config.tta)
  predict         the same, with every per-image confidence signal (confidence.py)
  to_mask         one probability map [S, S] -> bool [H, W]: resized to the size that is
                  scored or written, thresholded, then post-processed

Post-processing runs on the thresholded mask at the size that is scored or written (the
original image size for full-resolution evaluation and for isic-predict's files; S x S
when scoring records at their own size), not on the S x S map before enlarging: the
guarantee it gives (one region, no holes) then holds for the mask ISIC scores, while
enlarging a post-processed low-resolution map and thresholding again could bring specks
and holes back through the bilinear interpolation. Its cost grows with the number of row
runs, not of pixels (launch/inference/postprocess.py).
"""

import numpy as np

from launch.inference import confidence
from launch.inference import models
from launch.inference import postprocess
from launch.inference import tta
from launch.inference.config import InferenceConfig
from model import metrics


def probabilities(
    model, images: np.ndarray, config: InferenceConfig, batch_size: int | None = None
) -> np.ndarray:
    """Probabilities of a batch: float32 [B, S, S, 3] in [0, 1] -> float32 [B, S, S].

    With `config.tta`, the mean over tta.TRANSFORMS, each prediction turned back.
    `batch_size`: pad batches to it (`models.predict`), so one shape is traced.
    """

    def predict(x):
        return models.predict(model, x, batch_size)

    return tta.average(predict, images) if config.tta else predict(images)


def predict(
    model, images: np.ndarray, config: InferenceConfig, batch_size: int | None = None
) -> tuple[np.ndarray, dict]:
    """`probabilities`, and the confidence signals of each image.

    Returns:
      (float32 [B, S, S] probabilities, {signal name: float32 [B]}: every signal of
       confidence.signals; tta_agreement only with config.tta). The chosen one is
       `signals[config.confidence]`.
    """

    def run(x):
        return models.predict(model, x, batch_size)

    stacked = tta.passes(run, images) if config.tta else None  # [8, B, S, S]
    p = tta.mean(stacked) if config.tta else run(images)
    values = confidence.signals(p, config.threshold, stacked)
    return p, {name: v.numpy() for name, v in values.items()}


def to_mask(
    probability: np.ndarray, config: InferenceConfig, size: tuple[int, int] | None = None
) -> np.ndarray:
    """One probability map float32 [S, S] -> bool [H, W] mask.

    Resized (bilinear, `models.to_original_size`) to `size` (height, width) when given,
    foreground where p > config.threshold (metrics.binarize_probabilities), then holes
    filled and the largest region kept as the config asks (postprocess.apply).
    """
    if size is not None:
        probability = models.to_original_size(probability, size)
    mask = metrics.binarize_probabilities(probability, config.threshold).numpy()
    return postprocess.apply(mask, config.fill_holes, config.largest_component)
