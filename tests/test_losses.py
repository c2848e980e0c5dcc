"""Per-image losses: exact values on hand-made masks, float32 under low-precision inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import losses


def _disc(size=16):
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4) ** 2).astype(np.float32)[
        None, ..., None
    ]


def test_perfect_prediction_gives_dice_one_and_near_zero_loss():
    truth = _disc()  # [1, 16, 16, 1]
    assert truth.sum() > 0
    np.testing.assert_equal(losses.soft_dice_per_image(truth, truth).numpy(), [1.0])
    loss = losses.bce_dice_loss(truth, truth).numpy()
    assert loss.shape == (1,) and 0 <= loss[0] < 1e-6  # only the epsilon clip's -log(1 - 1e-7)


def test_empty_truth_and_empty_prediction_score_one():
    empty = np.zeros([2, 8, 8, 1], np.float32)
    np.testing.assert_equal(losses.soft_dice_per_image(empty, empty).numpy(), [1.0, 1.0])


def test_soft_dice_hand_value_per_image():
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    pred = np.array([[1, 0.5, 0.5, 0], [0, 0, 0, 1]], np.float32)
    # image 0: 2*1.5 + 1 over 2 + 2 + 1 -> 4/5; image 1: 0 + 1 over 1 + 1 + 1 -> 1/3
    np.testing.assert_allclose(losses.soft_dice_per_image(truth, pred).numpy(), [0.8, 1 / 3], rtol=1e-7)
    np.testing.assert_allclose(losses.soft_dice_per_image(truth, pred, smooth=0.0).numpy(), [0.75, 0.0])


def test_bce_matches_keras_and_hand_value():
    truth = np.array([[1, 0, 1, 0]], np.float32)
    pred = np.array([[0.5, 0.5, 0.9, 0.2]], np.float32)
    expected = -(np.log(0.5) + np.log(0.5) + np.log(0.9) + np.log(0.8)) / 4
    got = losses.binary_crossentropy_per_image(truth, pred).numpy()
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    np.testing.assert_allclose(got, keras.losses.binary_crossentropy(truth, pred).numpy(), rtol=1e-6)


def test_bce_is_finite_and_capped_for_certain_wrong_pixels():
    truth = tf.constant([[1.0, 0.0]])
    pred = tf.Variable([[0.0, 1.0]])
    with tf.GradientTape() as tape:
        loss = losses.bce_dice_loss(truth, pred)
    grad = tape.gradient(loss, pred)
    assert np.isfinite(loss.numpy()).all() and np.isfinite(grad.numpy()).all()
    # Clipped to [eps, 1 - eps] in float32, where 1 - 1e-7 rounds to 1 - 2**-23.
    eps = np.float32(keras.config.epsilon())
    cap = -(np.log(np.float64(eps)) + np.log(1 - np.float64(np.float32(1) - eps))) / 2
    np.testing.assert_allclose(losses.binary_crossentropy_per_image(truth, pred).numpy(), [cap], rtol=1e-5)


def test_weights_select_the_terms():
    truth = _disc()
    pred = np.full_like(truth, 0.3)
    bce = losses.binary_crossentropy_per_image(truth, pred).numpy()
    dice = losses.soft_dice_per_image(truth, pred).numpy()
    np.testing.assert_allclose(losses.bce_dice_loss(truth, pred).numpy(), bce + 1 - dice, rtol=1e-6)
    np.testing.assert_allclose(losses.bce_dice_loss(truth, pred, dice_weight=0.0).numpy(), bce, rtol=1e-6)
    np.testing.assert_allclose(losses.bce_dice_loss(truth, pred, bce_weight=0.0).numpy(), 1 - dice, rtol=1e-6)
    np.testing.assert_allclose(
        losses.bce_dice_loss(truth, pred, 2.0, 0.5).numpy(), 0.5 * bce + 2 * (1 - dice), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_sum_in_float32(dtype):
    # 128x128 = 16,384 pixels: summed in float16 a running sum of 1s stalls at 2,048, and
    # bfloat16 at 256; float32 is exact.
    truth = tf.ones([2, 128, 128, 1], dtype)
    pred = tf.concat(
        [tf.fill([1, 128, 128, 1], tf.constant(0.5, dtype)), tf.ones([1, 128, 128, 1], dtype)], axis=0
    )
    dice = losses.soft_dice_per_image(truth, pred)
    assert dice.dtype == tf.float32
    # image 0: (2 * 8192 + 1) / (16384 + 8192 + 1); image 1: perfect
    np.testing.assert_allclose(dice.numpy(), [16385 / 24577, 1.0], rtol=1e-6)
    loss = losses.bce_dice_loss(truth, pred)
    assert loss.dtype == tf.float32 and loss.shape == (2,)
    np.testing.assert_allclose(loss.numpy()[0], np.log(2) + 1 - 16385 / 24577, rtol=1e-5)


def test_integer_truth_and_graph_mode():
    truth = _disc().astype(np.uint8)
    pred = np.full(truth.shape, 0.25, np.float32)
    eager = losses.bce_dice_loss(truth, pred)
    graph = tf.function(losses.bce_dice_loss)(tf.constant(truth), tf.constant(pred))
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(
        ValueError, match=r"y_true shape \(1, 4, 4, 1\) differs from y_pred shape \(1, 4, 4, 2\)"
    ):
        losses.bce_dice_loss(np.zeros([1, 4, 4, 1]), np.zeros([1, 4, 4, 2]))


def test_recall_weight_one_half_is_soft_dice_bit_for_bit():
    rng = np.random.default_rng(0)
    truth = (rng.uniform(size=[3, 16, 16, 1]) > 0.6).astype(np.float32)
    pred = rng.uniform(size=[3, 16, 16, 1]).astype(np.float32)
    np.testing.assert_array_equal(
        losses.soft_tversky_per_image(truth, pred, 0.5).numpy(),
        losses.soft_dice_per_image(truth, pred).numpy(),
    )
    np.testing.assert_array_equal(
        losses.training_loss()(truth, pred).numpy(), losses.bce_dice_loss(truth, pred).numpy()
    )


def test_recall_weight_hand_value_and_missed_pixels_cost_more():
    truth = np.zeros([1, 4, 4, 1], np.float32)
    truth[0, :2, :, 0] = 1  # 8 lesion pixels
    under = truth.copy()
    under[0, 1, :, 0] = 0  # 4 missed: TP 4, FP 0, FN 4
    over = truth.copy()
    over[0, 2, :, 0] = 1  # 4 false: TP 8, FP 4, FN 0
    beta = 0.7
    # doubled form with smoothing 1: (2 TP + 1) / (2 (TP + 0.3 FP + 0.7 FN) + 1)
    np.testing.assert_allclose(
        losses.soft_tversky_per_image(truth, under, beta).numpy(), [9 / (2 * (4 + 0.7 * 4) + 1)], rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.soft_tversky_per_image(truth, over, beta).numpy(), [17 / (2 * (8 + 0.3 * 4) + 1)], rtol=1e-6
    )
    loss = losses.training_loss(recall_weight=beta)
    assert loss(truth, under).numpy()[0] > loss(truth, over).numpy()[0]  # what pushes outlines outward


def test_recall_weight_out_of_range_is_refused():
    with pytest.raises(ValueError, match="recall_weight"):
        losses.soft_tversky_per_image(_disc(), _disc(), 1.5)
    from core.errors import UserError
    from launch.training.config import TrainConfig

    with pytest.raises(UserError, match="--recall_weight must be <= 1.0"):
        TrainConfig(recall_weight=1.5)
