"""Per-image segmentation losses, computed in float32 for a custom distributed training loop.

Every loss returns one value per image, float32 [B]: the trainer reduces it with
`tf.nn.compute_average_loss(per_image, global_batch_size=...)`, which divides by the
global batch size so that summing over replicas gives the global mean. Inputs may be
float16/bfloat16 (mixed precision) or integer 0/1 masks; they are cast to float32 first,
so sums over a 128x128 image (16,384 pixels, beyond float16's exact-integer range of
2,048) stay exact.

Shapes: y_true and y_pred are [B, ...] (normally [B, S, S, 1]); every non-batch axis is
reduced.
"""

import functools

import keras
import tensorflow as tf


def _flat_float32(x) -> tf.Tensor:
    """[B, ...] any dtype -> float32 [B, N]."""
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _flat_pair(y_true, y_pred) -> tuple[tf.Tensor, tf.Tensor]:
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(f"y_true shape {y_true.shape} differs from y_pred shape {y_pred.shape}")
    return _flat_float32(y_true), _flat_float32(y_pred)


def soft_dice_per_image(y_true, y_pred, smooth: float = 1.0) -> tf.Tensor:
    """Soft Dice coefficient per image.

    dice = (2 * sum(t * p) + smooth) / (sum(t) + sum(p) + smooth), sums over H, W, C in
    float32 whatever the input dtype. `smooth` makes an empty truth with an empty
    prediction score 1 and keeps the gradient finite.

    Args:
      y_true: [B, ...] 0/1 truth, any numeric dtype.
      y_pred: [B, ...] probabilities in [0, 1], any float dtype.
      smooth: additive smoothing, > 0.
    Returns:
      float32 [B], in (0, 1].
    """
    t, p = _flat_pair(y_true, y_pred)
    intersection = tf.reduce_sum(t * p, axis=1)
    total = tf.reduce_sum(t, axis=1) + tf.reduce_sum(p, axis=1)
    return (2.0 * intersection + smooth) / (total + smooth)


def binary_crossentropy_per_image(y_true, y_pred) -> tf.Tensor:
    """Mean binary cross-entropy per image, from probabilities, in float32.

    Probabilities are clipped to [eps, 1 - eps] with eps = keras.config.epsilon() (1e-7),
    as `keras.losses.binary_crossentropy` does, so log never sees 0; a confidently wrong
    pixel therefore costs at most -log(1e-7) ~= 16.1.

    Returns:
      float32 [B].
    """
    t, p = _flat_pair(y_true, y_pred)
    eps = keras.config.epsilon()
    p = tf.clip_by_value(p, eps, 1.0 - eps)
    bce = -(t * tf.math.log(p) + (1.0 - t) * tf.math.log(1.0 - p))  # [B, N]
    return tf.reduce_mean(bce, axis=1)


def soft_tversky_per_image(y_true, y_pred, recall_weight: float, smooth: float = 1.0) -> tf.Tensor:
    """Soft Tversky index per image (Salehi et al. 2017) with alpha + beta = 1, beta = recall_weight.

    TP / (TP + (1 - beta) * FP + beta * FN), written as
    (2 * sum(t * p) + smooth) / (2 * (1 - beta) * sum(p) + 2 * beta * sum(t) + smooth):
    beta = 0.5 is `soft_dice_per_image` bit for bit (2 * 0.5 is exactly 1); beta > 0.5 makes
    a missed lesion pixel cost more than a false one, pushing outlines outward (the
    under-segmentation of faint lesion margins, docs/recipes.md).

    Returns:
      float32 [B], in (0, 1].
    """
    if not 0.0 <= recall_weight <= 1.0:
        raise ValueError(f"recall_weight must be in [0, 1], got {recall_weight}")
    if recall_weight == 0.5:
        return soft_dice_per_image(y_true, y_pred, smooth)
    t, p = _flat_pair(y_true, y_pred)
    intersection = tf.reduce_sum(t * p, axis=1)
    total = 2.0 * (1.0 - recall_weight) * tf.reduce_sum(p, axis=1) + 2.0 * recall_weight * tf.reduce_sum(
        t, axis=1
    )
    return (2.0 * intersection + smooth) / (total + smooth)


def bce_dice_loss(
    y_true, y_pred, dice_weight: float = 1.0, bce_weight: float = 1.0, recall_weight: float = 0.5
) -> tf.Tensor:
    """bce_weight * mean BCE per image + dice_weight * (1 - soft Dice per image).

    Args:
      y_true: [B, S, S, 1] 0/1 truth (any numeric dtype).
      y_pred: [B, S, S, 1] probabilities (the model's float32 sigmoid output).
      dice_weight, bce_weight: weights of the two terms.
      recall_weight: 0.5 for soft Dice; otherwise the Tversky index with this weight on
        missed pixels (`soft_tversky_per_image`).
    Returns:
      float32 [B], per-image loss for `tf.nn.compute_average_loss`.
    """
    bce = binary_crossentropy_per_image(y_true, y_pred)
    dice = soft_tversky_per_image(y_true, y_pred, recall_weight)
    return bce_weight * bce + dice_weight * (1.0 - dice)


def training_loss(dice_weight: float = 1.0, recall_weight: float = 0.5):
    """The loss the train and eval steps use: `(y_true, y_pred) -> float32 [B]`, one place
    for the options (`isic-train --dice_weight --recall_weight`)."""
    return functools.partial(bce_dice_loss, dice_weight=dice_weight, recall_weight=recall_weight)
