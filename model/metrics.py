"""ISIC 2018 Task 1 segmentation metrics: the one definition shared by training,
evaluation and the tests.

Per image, after binarising truth and prediction:
  probability map  -> foreground where p > 0.5 (exactly 0.5 is background)
  8-bit mask       -> foreground where value > 128 (128 is background, 129 foreground)
  0/1 mask (our TFRecords) -> use `binarize_probabilities` (1 > 0.5, 0 is not)

  accuracy            (tp + tn) / (tp + fp + fn + tn)
  sensitivity         tp / (tp + fn)          1 when the truth has no foreground
  specificity         tn / (tn + fp)          1 when the truth has no background
  jaccard             tp / (tp + fp + fn)     1 when both masks are empty
  thresholded_jaccard jaccard if jaccard >= 0.65 else 0
  dice                2tp / (2tp + fp + fn)   1 when both masks are empty

The summary over a set of images is the unweighted mean of the per-image values (every
image counts once whatever its size; pixels are never pooled across images). The
headline is the mean thresholded Jaccard, with the mean Dice beside it.

Everything is written with TF ops, so the same functions run inside a `tf.function` on
training batches and eagerly on numpy arrays of any size (full-resolution evaluation).

Precision: counts are summed exactly in int64, then cast to `dtype`. float64 (the
default) represents every count exactly up to 2**53 pixels. float32 represents integers
exactly only up to 2**24 = 16,777,216, which a 4000x6000 dermoscopy image (24M pixels)
exceeds, so asking for float32 counts on images larger than that raises; float32 is fine
(and cheaper on accelerators) at training sizes such as 128x128.
"""

import numpy as np
import tensorflow as tf

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "jaccard", "thresholded_jaccard", "dice")
JACCARD_THRESHOLD = 0.65
# 0.65 == 13 / 20: the threshold test is done as 20 * tp >= 13 * (tp + fp + fn), exact
# on integer-valued counts, instead of comparing a rounded quotient with a rounded 0.65.
_THRESHOLD_NUM, _THRESHOLD_DEN = 13, 20
_FLOAT32_EXACT_LIMIT = 2**24


def binarize_probabilities(p, threshold: float = 0.5) -> tf.Tensor:
    """Probability map (any float dtype, any shape) -> bool, foreground where p > threshold.

    Also binarises 0/1 masks of any numeric dtype (1 > 0.5).
    """
    p = tf.convert_to_tensor(p)
    return tf.math.greater(p, tf.cast(threshold, p.dtype))


def binarize_uint8_mask(m) -> tf.Tensor:
    """8-bit mask (uint8, any shape, values 0..255) -> bool, foreground where m > 128.

    Raises:
      TypeError: m is not uint8 (a 0/1 mask would silently become all background here;
        binarise those with `binarize_probabilities`).
    """
    m = tf.convert_to_tensor(m)
    if m.dtype != tf.uint8:
        raise TypeError(
            f"binarize_uint8_mask expects a uint8 mask on the 0-255 scale, got "
            f"{m.dtype.name}; use binarize_probabilities for 0/1 or probability maps"
        )
    return tf.math.greater(m, tf.constant(128, tf.uint8))


def _check_float32_exact(flat: tf.Tensor, dtype: tf.DType) -> list:
    """Returns assertions (possibly none) that float32 counts of `flat` [B, N] are exact."""
    if dtype != tf.float32:
        return []
    pixels = flat.shape[1]
    message = (
        f"images of more than {_FLOAT32_EXACT_LIMIT} pixels cannot be counted exactly "
        f"in float32; pass dtype=tf.float64"
    )
    if pixels is not None:
        if pixels > _FLOAT32_EXACT_LIMIT:
            raise ValueError(f"{message} (got {pixels} pixels per image)")
        return []
    return [
        tf.debugging.assert_less_equal(
            tf.shape(flat, out_type=tf.int64)[1], tf.constant(_FLOAT32_EXACT_LIMIT, tf.int64), message=message
        )
    ]


def confusion_per_image(truth_bool, pred_bool, dtype: tf.DType = tf.float64):
    """Counts the confusion matrix of each image.

    Args:
      truth_bool: bool [B, H, W] or [B, H, W, C], the binarised truth.
      pred_bool: bool, same shape, the binarised prediction.
      dtype: tf.float64 (default, exact for any image) or tf.float32 (exact only up to
        2**24 pixels per image; larger images raise).
    Returns:
      (tp, fp, fn, tn), each `dtype` [B], counted over H, W (and C) of each image.
    Raises:
      ValueError: wrong rank, shapes differ, non-bool inputs, or float32 on too large images.
    """
    truth = tf.convert_to_tensor(truth_bool)
    pred = tf.convert_to_tensor(pred_bool)
    if truth.dtype != tf.bool or pred.dtype != tf.bool:
        raise ValueError(
            f"confusion_per_image needs bool masks (binarise first), got "
            f"{truth.dtype.name} and {pred.dtype.name}"
        )
    if truth.shape.rank not in (3, 4) or not truth.shape.is_compatible_with(pred.shape):
        raise ValueError(
            f"expected truth and prediction of one shape [B, H, W] or [B, H, W, C], "
            f"got {truth.shape} and {pred.shape}"
        )
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.float64):
        raise ValueError(f"dtype must be tf.float32 or tf.float64, got {dtype}")
    batch = tf.shape(truth)[0]
    truth = tf.reshape(truth, [batch, -1])  # [B, N]
    pred = tf.reshape(pred, [batch, -1])
    checks = _check_float32_exact(truth, dtype)
    with tf.control_dependencies(checks):

        def count(mask):  # bool [B, N] -> int64 [B], exact for any image size
            return tf.reduce_sum(tf.cast(mask, tf.int64), axis=1)

        tp = count(truth & pred)
        fp = count(pred) - tp
        fn = count(truth) - tp
        tn = tf.shape(truth, out_type=tf.int64)[1] - tp - fp - fn
    tp, fp, fn, tn = (tf.cast(c, dtype) for c in (tp, fp, fn, tn))
    return tp, fp, fn, tn


def _ratio_or_one(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """numerator / denominator, and 1 where the denominator is 0 (no NaN, even in gradients)."""
    empty = tf.equal(denominator, 0)
    safe = tf.where(empty, tf.ones_like(denominator), denominator)
    return tf.where(empty, tf.ones_like(numerator), numerator / safe)


def isic_scores(tp, fp, fn, tn) -> dict:
    """The ISIC 2018 Task 1 per-image scores from confusion counts.

    Args:
      tp, fp, fn, tn: float [B] counts (from `confusion_per_image`), one dtype.
    Returns:
      dict name -> Tensor [B] of the counts' dtype, keys METRIC_NAMES (edge cases in the
      module docstring).
    """
    tp, fp, fn, tn = (tf.convert_to_tensor(c) for c in (tp, fp, fn, tn))
    union = tp + fp + fn
    jaccard = _ratio_or_one(tp, union)
    # Exact threshold on integer counts, in float64 so 20 * tp cannot round even when
    # the counts are float32; union 0 gives 0 >= 0, i.e. a jaccard of 1 is kept.
    tp64, union64 = tf.cast(tp, tf.float64), tf.cast(union, tf.float64)
    passes = _THRESHOLD_DEN * tp64 >= _THRESHOLD_NUM * union64
    return {
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "sensitivity": _ratio_or_one(tp, tp + fn),
        "specificity": _ratio_or_one(tn, tn + fp),
        "jaccard": jaccard,
        "thresholded_jaccard": tf.where(passes, jaccard, tf.zeros_like(jaccard)),
        "dice": _ratio_or_one(2.0 * tp, 2.0 * tp + fp + fn),
    }


TRAINING_SCORES = ("accuracy", "dice", "jaccard")  # the columns of batch_scores


def batch_scores(truth01, probabilities) -> tf.Tensor:
    """Accuracy, Dice and Jaccard of each image at training size, for the training loop.

    The same values as `isic_scores(*confusion_per_image(...))` (foreground where p > 0.5,
    the same empty-mask rules), computed from three float32 sums per image (tp, |truth|,
    |pred|) instead of four int64 counts and six scores: this runs inside every training
    step, where the dozens of small ops of the general path cost about as much as the
    whole step of a small model (docs/performance.md). float32 sums of 0/1 values are exact
    below 2**24 pixels per image (128x128 has 16,384).

    Args:
      truth01: [B, S, S, 1] 0/1 truth, any numeric dtype (S static).
      probabilities: [B, S, S, 1] probabilities, any float dtype.
    Returns:
      float32 [B, 3]: the TRAINING_SCORES columns.
    """
    truth = tf.cast(binarize_probabilities(truth01, 0.5), tf.float32)  # [B, S, S, 1] 0/1
    pred = tf.cast(binarize_probabilities(probabilities, 0.5), tf.float32)
    axes = list(range(1, truth.shape.rank))
    pixels = int(np.prod(truth.shape[1:]))  # static at training sizes: no shape ops
    if pixels > _FLOAT32_EXACT_LIMIT:
        raise ValueError(
            f"batch_scores counts in float32; images of {pixels} pixels "
            "need confusion_per_image with dtype=tf.float64"
        )
    tp = tf.reduce_sum(truth * pred, axis=axes)  # [B]
    both = tf.reduce_sum(truth, axis=axes) + tf.reduce_sum(pred, axis=axes)  # 2tp + fp + fn
    union = both - tp  # tp + fp + fn
    empty = tf.equal(union, 0.0)  # both masks empty: Dice and Jaccard are 1
    return tf.stack(
        [
            (pixels - union + tp) / pixels,  # (tp + tn) / N
            tf.where(empty, 1.0, 2.0 * tp / tf.maximum(both, 1.0)),
            tf.where(empty, 1.0, tp / tf.maximum(union, 1.0)),
        ],
        axis=1,
    )


def summarize(per_image: dict) -> dict:
    """Summarises per-image scores over a set of images.

    Args:
      per_image: dict name -> 1-D array-like of per-image values (numpy, lists or
        tensors), all of one length >= 1; normally the keys of METRIC_NAMES, gathered over
        the whole split. "jaccard", "thresholded_jaccard" and "dice" are required.
    Returns:
      JSON-ready dict of Python numbers:
        {"num_images": n,
         "headline": {"thresholded_jaccard": mean, "dice": mean},
         "mean": {name: unweighted mean over images}, "median": {name: median},
         "fraction_jaccard_below_0.65": share of images with jaccard < 0.65, counted
            as thresholded_jaccard == 0 so it agrees with isic_scores' exact threshold}
    Raises:
      ValueError: missing keys, empty or ragged input, or NaN values (a zero-pixel image).
    """
    arrays = {name: np.asarray(values, np.float64).reshape(-1) for name, values in per_image.items()}
    missing = {"jaccard", "thresholded_jaccard", "dice"} - set(arrays)
    if missing:
        raise ValueError(f"summarize needs per-image {sorted(missing)}; got keys {sorted(arrays)}")
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"per-image arrays must be non-empty and of one length, got {lengths}")
    for name, a in arrays.items():
        if np.isnan(a).any():
            raise ValueError(
                f"per-image {name} has NaN at images {np.flatnonzero(np.isnan(a))[:10].tolist()}"
            )
    mean = {name: float(a.mean()) for name, a in arrays.items()}
    # Below 0.65 <=> thresholded to 0: reuses isic_scores' exact test instead of comparing
    # a float32-rounded jaccard (13/20 -> 0.64999998) with 0.65 again here.
    below = arrays["thresholded_jaccard"] == 0.0
    return {
        "num_images": int(arrays["jaccard"].size),
        "headline": {"thresholded_jaccard": mean["thresholded_jaccard"], "dice": mean["dice"]},
        "mean": mean,
        "median": {name: float(np.median(a)) for name, a in arrays.items()},
        f"fraction_jaccard_below_{JACCARD_THRESHOLD}": float(np.mean(below)),
    }
