"""The U-Net builder: shapes, dtypes under mixed precision, size, save/load, learning, FLOPs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops  # TF's registered per-op FLOP statistics

from model import losses
from model import unet
from preprocessing import tiny_records

MOMENTUM = 0.9  # any value in [0, 1): these tests do not depend on it


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and always restores float32."""

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def _images(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [tiny_records.make_pair(rng, size) for _ in range(batch)]
    images = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0  # [B, S, S, 3] in [0, 1]
    masks = np.stack([p[1] for p in pairs])[..., None].astype(np.float32)  # [B, S, S, 1] 0/1
    return images, masks


@pytest.mark.parametrize(
    "policy_name, compute",
    [("float32", "float32"), ("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")],
)
def test_tiny_model_shapes_and_float32_output(policy, policy_name, compute):
    policy(policy_name)
    model = unet.build_unet(image_size=32, base_filters=4, bn_momentum=MOMENTUM)
    images, _ = _images(2, 32)
    out = model(images, training=False)
    assert out.shape == (2, 32, 32, 1)
    assert out.dtype == tf.float32
    assert np.all((out.numpy() >= 0) & (out.numpy() <= 1))
    # The policy really applied inside, and only the last layer is pinned to float32.
    assert model.get_layer("down1_a_conv").compute_dtype == compute
    assert model.get_layer("up1_upconv").compute_dtype == compute
    assert model.get_layer("mask").compute_dtype == "float32"
    # Variables stay float32 under every policy.
    assert {w.dtype for w in model.weights} == {"float32"}


@pytest.mark.parametrize(
    "base_filters, total, trainable",
    [(16, 1_945_521, 1_942_577), (32, 7_768_929, 7_763_041), (64, 31_049_409, 31_037_633)],
)
def test_parameter_counts(base_filters, total, trainable):
    model = unet.build_unet(image_size=128, base_filters=base_filters, bn_momentum=MOMENTUM)
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    assert model.output_shape == (None, 128, 128, 1)


@pytest.mark.parametrize("size", [100, 8, 0, 33])
def test_bad_image_size_raises(size):
    with pytest.raises(
        ValueError, match=rf"image_size {size} must be a positive multiple of 2\*\*depth = 16"
    ):
        unet.build_unet(image_size=size, base_filters=4, bn_momentum=MOMENTUM)


def test_bn_momentum_reaches_every_batch_norm_layer():
    model = unet.build_unet(image_size=16, base_filters=2, depth=2, bn_momentum=0.5)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 10 and {layer.momentum for layer in norms} == {0.5}


def test_depth_changes_the_divisibility_rule():
    model = unet.build_unet(image_size=8, base_filters=2, depth=2, bn_momentum=MOMENTUM)
    assert model.output_shape == (None, 8, 8, 1)
    with pytest.raises(ValueError, match="2\\*\\*depth = 4"):
        unet.build_unet(image_size=6, base_filters=2, depth=2, bn_momentum=MOMENTUM)


def test_save_and_load_without_custom_objects(tmp_path):
    model = unet.build_unet(image_size=32, base_filters=4, bn_momentum=MOMENTUM)
    images, masks = _images(2, 32)
    # One training step so batch-norm statistics and weights differ from initialisation.
    optimizer = keras.optimizers.Adam(1e-2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.bce_dice_loss(masks, model(images, training=True)))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    path = str(tmp_path / "unet.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode, no custom_objects
    np.testing.assert_array_equal(
        loaded(images, training=False).numpy(), model(images, training=False).numpy()
    )
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


def test_gradient_steps_reduce_the_loss():
    keras.utils.set_random_seed(0)
    model = unet.build_unet(image_size=32, base_filters=4, bn_momentum=MOMENTUM)
    images, masks = _images(8, 32, seed=1)
    optimizer = keras.optimizers.Adam(1e-2)

    # Eager on purpose: on a CPU, tracing this step into a tf.function costs more than the
    # six eager steps do.
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.bce_dice_loss(masks, model(images, training=True)))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        )
        return loss

    history = [float(step()) for _ in range(6)]
    assert all(np.isfinite(history))
    assert all(b < a for a, b in zip(history, history[1:])), history
    assert history[-1] < 0.75 * history[0], history


def _layer_walk_flops(model) -> float:
    """Independent count from the built layers: 2 * (output pixels) * kernel MACs."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h_in, w_in, _ = layer.input.shape
            kh, kw, c_out, c_in = layer.kernel.shape  # transposed kernels are [kh, kw, out, in]
            macs += h_in * w_in * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
            macs += h * w * kh * kw * c_in * c_out
    return 2.0 * macs


@pytest.mark.parametrize("size, filters, depth", [(32, 4, 4), (16, 3, 2), (64, 8, 3)])
def test_flops_match_a_walk_over_the_built_layers(size, filters, depth):
    model = unet.build_unet(image_size=size, base_filters=filters, depth=depth, bn_momentum=MOMENTUM)
    assert unet.unet_flops_per_image(size, filters, depth) == _layer_walk_flops(model)


def test_conv_flops_match_tensorflows_own_statistics():
    # TF registers FLOP statistics for Conv2D (what tf.compat.v1.profiler sums) but not for
    # the transposed conv (Conv2DBackpropInput), so compare the Conv2D part with TF's count
    # and the transposed part with a direct formula from the graph's op shapes.
    size, filters, depth = 32, 4, 4
    model = unet.build_unet(image_size=size, base_filters=filters, depth=depth, bn_momentum=MOMENTUM)
    graph = (
        tf.function(lambda x: model(x, training=False))
        .get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
        .graph
    )
    conv, transposed = 0, 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            conv += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
        elif op.type == "Conv2DBackpropInput":
            _, h_in, w_in, c_in = op.inputs[2].shape  # the "gradient" input is the layer input
            kh, kw, c_out, _ = op.inputs[1].shape
            transposed += 2 * h_in * w_in * kh * kw * c_in * c_out
    assert conv > 0 and transposed > 0
    assert conv + transposed == unet.unet_flops_per_image(size, filters, depth)


def test_full_size_flops_against_the_issue_estimate():
    forward = unet.unet_flops_per_image(128, 64, 4)
    assert forward == 24_083_693_568
    training = forward * unet.TRAINING_FLOPS_PER_FORWARD_FLOP
    # The issue quotes "about 80 GFLOP per training image"; the exact conv count is 72.3.
    assert 70e9 < training < 80e9
