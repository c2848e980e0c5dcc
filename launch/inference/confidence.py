"""A per-image confidence in [0, 1] from a probability map: the one implementation.

isic-evaluate, isic-predict and the exported serving graph (launch/export/serving.py)
all call `signals` / `confidence` below. They are written with TensorFlow ops, so the
same code runs eagerly on numpy arrays (evaluation, prediction) and inside the serving
graph's tf.function: one definition, the same numbers (tests/test_confidence.py).

Input: the probability map at the model's S x S (the mean over the 8 TTA passes with
--tta), before the resize and the post-processing, so an image gets one confidence
whatever resolution it is scored or written at. m = (p > threshold) is the map's own mask.

  expected_jaccard  sum(p * m) / sum(p + m - p * m): the soft Jaccard of the map with its
                    own mask (1 when every pixel is exactly 0 or 1)
  boundary_margin   mean |2p - 1| over the outline of m (pixels with a 4-neighbour on the
                    other side; the image border is not an outline)
  certain_share     L / (L + U): L pixels with p >= 0.9, U pixels with 0.1 < p < 0.9
  tta_agreement     mean over the TTA passes of Jaccard(pass > threshold, m); needs the
                    passes [T, B, S, S] (--tta)

A map without foreground (m empty) has confidence 0 under every signal: every ISIC image
shows a lesion, so an empty mask is always worth a look. How the default signal was
chosen (on the validation split only): docs/evaluation.md.
"""

import tensorflow as tf

from launch.inference.config import CONFIDENCE_SIGNALS
from launch.inference.config import TTA_SIGNALS

SURE = 0.9  # certain_share: p >= SURE is sure lesion, p <= 1 - SURE sure background


def _outline(m: tf.Tensor) -> tf.Tensor:
    """bool [B, S, S] -> bool [B, S, S]: pixels with a 4-neighbour of the other value.

    The map is padded by repeating its edge, so the image border is not an outline."""
    x = tf.pad(tf.cast(m, tf.int8)[..., None], [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC")[..., 0]
    centre = x[:, 1:-1, 1:-1]
    neighbours = (x[:, :-2, 1:-1], x[:, 2:, 1:-1], x[:, 1:-1, :-2], x[:, 1:-1, 2:])
    return tf.reduce_any(tf.stack([n != centre for n in neighbours]), axis=0)


def _sum(x: tf.Tensor) -> tf.Tensor:
    """float32 [..., S, S] -> [...]: the sum over the two image axes."""
    return tf.reduce_sum(tf.cast(x, tf.float32), axis=[-2, -1])


def _jaccard(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """bool [..., S, S] twice -> float32 [...]; 0 when both are empty (m empty gives 0 anyway)."""
    return tf.math.divide_no_nan(_sum(a & b), _sum(a | b))


def signals(p, threshold: float, passes=None) -> dict:
    """Every candidate signal of a batch of maps.

    Args:
      p: float32 [B, S, S] probabilities (the TTA mean with TTA).
      threshold: foreground where p > threshold (InferenceConfig.threshold).
      passes: float32 [T, B, S, S], the T TTA passes turned back, or None: then
        tta_agreement is left out.
    Returns:
      {signal name: float32 [B] in [0, 1]} in CONFIDENCE_SIGNALS order.
    """
    p = tf.convert_to_tensor(p, tf.float32)
    m = p > threshold  # [B, S, S]
    mf = tf.cast(m, tf.float32)
    outline = _outline(m)
    sure, unsure = p >= SURE, (p > 1.0 - SURE) & (p < SURE)
    values = {
        "expected_jaccard": tf.math.divide_no_nan(_sum(p * mf), _sum(p + mf - p * mf)),
        "boundary_margin": tf.math.divide_no_nan(
            _sum(tf.abs(2.0 * p - 1.0) * tf.cast(outline, tf.float32)), _sum(outline)
        ),
        "certain_share": tf.math.divide_no_nan(_sum(sure), _sum(sure) + _sum(unsure)),
    }
    if passes is not None:
        passes = tf.convert_to_tensor(passes, tf.float32)
        values["tta_agreement"] = tf.reduce_mean(_jaccard(passes > threshold, m[None]), axis=0)
    found = tf.reduce_any(m, axis=[1, 2])  # [B]
    return {
        name: tf.where(found, tf.clip_by_value(values[name], 0.0, 1.0), 0.0)
        for name in CONFIDENCE_SIGNALS
        if name in values
    }


def confidence(p, threshold: float, signal: str, passes=None) -> tf.Tensor:
    """The confidence of one signal: float32 [B] in [0, 1] (see `signals`).

    Raises:
      ValueError: an unknown signal, or a TTA signal without passes.
    """
    if signal not in CONFIDENCE_SIGNALS:
        raise ValueError(f"unknown confidence signal {signal!r}; use one of {CONFIDENCE_SIGNALS}")
    if signal in TTA_SIGNALS and passes is None:
        raise ValueError(f"the confidence signal {signal!r} needs the TTA passes (--tta)")
    return signals(p, threshold, passes)[signal]
