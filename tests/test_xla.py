"""`--jit_compile` (issue 28): what `auto` picks, the same training with and without XLA,
exact resume with XLA on, and the message when a layer cannot compile.

Tolerances, from the runs below on the AMD EPYC (Zen 4) machine: XLA fuses and reorders
float arithmetic, so the weights are not bit-equal. float32: the largest weight difference
after 3 Adam steps (lr 1e-3) is ~3e-6; the test allows 2e-5 (2% of one step's largest
move). mixed_float16 and mixed_bfloat16: half-precision rounding makes some near-zero
gradients change sign, and Adam moves such a weight by a full step either way, so single
weights can differ by up to ~2 steps; the test bounds the relative difference of the whole
update (|dw_xla - dw| / |dw| over all weights) by 0.1; float16 must also take the very same
loss-scale decisions (the overflow step skipped on both).
"""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from launch.training import build
from launch.training import xla
from launch.training.config import TrainConfig
from tests import loss_scale_probe
from tests.test_loss_scaling import _env
from tests.test_loss_scaling import _probe
from tests.test_loss_scaling import _states

ZEN4 = {"avx2", "avx512f", "avx512_bf16"}


def test_auto_is_on_for_gpus_and_follows_the_measured_cpu_kinds():
    assert xla.choose_jit_compile("auto", True, set()) == (
        True,
        "GPU (XLA fuses batch norm and element-wise ops)",
    )
    on, why = xla.choose_jit_compile("auto", False, ZEN4)
    assert on is bool(ZEN4 & set(xla.CPU_XLA_FASTER_FLAGS)) and "CPU" in why
    assert xla.choose_jit_compile("auto", False, ZEN4, cpu_xla_faster_flags=())[0] is False
    on, why = xla.choose_jit_compile("auto", False, ZEN4, cpu_xla_faster_flags=("avx512_bf16",))
    assert on and "avx512_bf16" in why
    assert xla.choose_jit_compile("auto", False, {"avx2"}, cpu_xla_faster_flags=("amx_bf16",))[0] is False
    for has_gpus in (True, False):  # explicit settings win everywhere
        assert xla.choose_jit_compile("on", has_gpus, ZEN4)[0] is True
        assert xla.choose_jit_compile("off", has_gpus, ZEN4)[0] is False


def test_sync_batch_norm_over_replicas_keeps_xla_off():
    assert xla.choose_jit_compile("auto", True, set(), sync_batch_norm_replicas=2)[0] is False
    assert xla.choose_jit_compile("on", True, set(), sync_batch_norm_replicas=1)[0] is True
    with pytest.raises(UserError, match="--jit_compile on cannot compile --sync_batch_norm over 2"):
        xla.choose_jit_compile("on", True, set(), sync_batch_norm_replicas=2)
    with pytest.raises(UserError, match="jit_compile"):
        TrainConfig(jit_compile="yes")


def test_deterministic_keeps_xla_off():
    assert xla.choose_jit_compile("auto", True, set(), deterministic=True) == (
        False,
        "--deterministic (XLA has no deterministic max-pool gradient)",
    )
    with pytest.raises(UserError, match="--jit_compile on cannot compile the U-Net under --deterministic"):
        xla.choose_jit_compile("on", False, set(), deterministic=True)


def _train_tiny(config: TrainConfig, model_fn, steps: int = 3):
    """(model, the steps' totals, build.Steps, iterator) after `steps` steps of 4 fixed batches."""
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    model = model_fn()
    optimizer = build.optimizer_for(model, config, 1, "float32")
    made = build.make_steps(strategy, model, optimizer, config)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4 * config.batch_size, 16, 16, 3)).astype(np.float32)
    masks = (rng.uniform(size=(4 * config.batch_size, 16, 16, 1)) > 0.5).astype(np.float32)
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, masks)).batch(config.batch_size))
    return model, made.train(iterator, steps), made, iterator


def test_float32_trains_the_same_with_and_without_xla_on_one_device():
    config = TrainConfig(batch_size=2, learning_rate=1e-3)
    runs = {
        jit: _train_tiny(dataclasses.replace(config, jit_compile=jit), loss_scale_probe._tiny_model)
        for jit in ("off", "on")
    }
    (plain, plain_totals, plain_steps, _), (compiled, totals, steps, iterator) = runs["off"], runs["on"]
    assert (plain_steps.jit_compile, steps.jit_compile) == (False, True)
    # The compiled step holds an XLA cluster (the plain one none: same function, same trace).
    graphs = [
        str(made.train.function.get_concrete_function(iterator, tf.constant(1)).graph.as_graph_def())
        for made in (steps, plain_steps)
    ]
    assert "_XlaMustCompile" in graphs[0] and "_XlaMustCompile" not in graphs[1]
    moving_mean = next(v for v in compiled.weights if "moving_mean" in v.path)
    assert np.abs(moving_mean.numpy()).max() > 1e-3  # the compiled step updates the statistics
    for a, b in zip(plain.weights, compiled.weights, strict=True):  # batch-norm statistics too
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-5, rtol=0, err_msg=a.path)
    np.testing.assert_allclose(plain_totals["loss"], totals["loss"], rtol=1e-5)
    assert totals["count"] == 6.0


def test_mixed_bfloat16_trains_the_same_with_and_without_xla():
    """bfloat16 rounds coarsely (8 bits of mantissa), so the bound is the update's, as for
    float16 (module doc); the loss agrees to bfloat16's precision."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        initial = [w.numpy().ravel() for w in loss_scale_probe._tiny_model().trainable_weights]
        config = TrainConfig(batch_size=2, learning_rate=1e-3, precision="mixed_bfloat16")
        runs = {
            jit: _train_tiny(dataclasses.replace(config, jit_compile=jit), loss_scale_probe._tiny_model)
            for jit in ("off", "on")
        }
    finally:
        keras.mixed_precision.set_global_policy(previous)
    (plain, plain_totals, _, _), (compiled, totals, steps, _) = runs["off"], runs["on"]
    assert steps.jit_compile and compiled.layers[1].compute_dtype == "bfloat16"
    weights = [[w.numpy().ravel() for w in m.trainable_weights] for m in (plain, compiled)]
    assert _update_difference(*weights, initial) < 0.1
    np.testing.assert_allclose(plain_totals["loss"], totals["loss"], rtol=2e-2)


def _numpy_layer_model():
    """A model whose middle layer adds a term NumPy computes (tf.numpy_function, which has
    no XLA kernel) outside the gradient, so the model still trains without XLA."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.layers.Lambda(
        lambda t: t + tf.stop_gradient(tf.reshape(tf.numpy_function(np.tanh, [t], tf.float32), tf.shape(t))),
        output_shape=(16, 16, 2),
    )(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def test_a_layer_xla_cannot_compile_is_a_user_error_naming_the_option():
    config = TrainConfig(batch_size=2, jit_compile="on")
    with pytest.raises(
        UserError, match=r"(?s)XLA cannot compile.*unsupported operations.*PyFunc.*--jit_compile off"
    ):
        _train_tiny(config, _numpy_layer_model, steps=1)
    # Without XLA the same model trains.
    _, totals, _, _ = _train_tiny(dataclasses.replace(config, jit_compile="off"), _numpy_layer_model, steps=1)
    assert np.isfinite(totals["loss"])
    assert not xla.is_compile_error(
        tf.errors.InvalidArgumentError(None, None, "indices[3] = 7 is not in [0, 4)")
    )


def _update_difference(run_a: dict, run_b: dict, first: list) -> float:
    """|dw_b - dw_a| / |dw_a| over all trainable weights, dw = final - initial."""
    a, b, w0 = (np.concatenate([np.asarray(w) for w in ws]) for ws in (run_a, run_b, first))
    return float(np.linalg.norm(b - a) / np.linalg.norm(a - w0))


def test_two_mirrored_replicas_train_the_same_with_xla_float32_and_float16_overflow():
    """2 logical CPUs (subprocesses: the split is fixed per process). mixed_float16: replica
    1's gradients overflow at the first step (masks of 1e6, see loss_scale_probe.py)."""
    cases = {"float32": "none;none;none", "mixed_float16": "1;none;none"}
    procs = {
        precision: _probe(2, steps, _env(), extra=[f"--precision={precision}", "--jit_compile=off,on"])
        for precision, steps in cases.items()
    }
    initial = _probe_initial_weights()
    for precision, proc in procs.items():
        runs = _states(proc, key="runs")
        off, on = runs["off"], runs["on"]
        for run in (off, on):
            assert all(s["finite"] and s["replicas_identical"] for s in run["states"]), precision
        if precision == "float32":
            for a, b in zip(off["weights"], on["weights"], strict=True):
                np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
            continue
        # The same decisions: step 1 skipped on both replicas, then two applied steps.
        for key in ("scale", "iterations"):
            assert (
                [s[key] for s in on["states"]]
                == [s[key] for s in off["states"]]
                == ([32768.0, 16384.0, 16384.0, 16384.0] if key == "scale" else [0, 0, 1, 2])
            )
        assert on["states"][0]["digest"] == on["states"][1]["digest"]  # the skip kept the weights
        assert _update_difference(off["weights"], on["weights"], initial) < 0.1


def _probe_initial_weights() -> list:
    """The probe model's weights from seed 0 (what both runs start from)."""
    keras.utils.set_random_seed(0)
    return [w.numpy().ravel() for w in loss_scale_probe._tiny_model().trainable_weights]


def _unet_run(config: TrainConfig, batches, checkpoint_dir=None, restore=None):
    """A depth-1 U-Net from the builder trained on `batches` with XLA on; saves a checkpoint
    into `checkpoint_dir` after them, or first restores `restore`. Returns its weights."""
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(len(batches))  # each run its own initial weights
    model, optimizer = build.model_and_optimizer(strategy, config, 16, 2, "float32", depth=1)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    if restore:
        checkpoint.restore(restore).assert_consumed()
    made = build.make_steps(strategy, model, optimizer, config)
    assert made.jit_compile
    made.train(iter(tf.data.Dataset.from_tensor_slices(batches)), len(batches[0]))
    path = checkpoint.save(os.path.join(checkpoint_dir, "ckpt")) if checkpoint_dir else None
    return [w.numpy() for w in model.weights], path


def test_resume_with_xla_on_is_bit_identical(tmp_path):
    """4 steps in one run against 2 steps, a checkpoint, and 2 more in a new model and
    optimizer restored from it (the trainer's resume; there without --deterministic, which
    XLA refuses, see above: XLA's CPU code and the rest of a one-device CPU step are
    deterministic by themselves). Weights, batch-norm statistics and Adam's state all
    round-trip: the compiled step assigns the statistics outside its cluster."""
    config = TrainConfig(batch_size=2, base_filters=2, lr_schedule="cosine", epochs=2, jit_compile="on")
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(4, 2, 16, 16, 3)).astype(np.float32)  # [step, b, S, S, 3]
    masks = (rng.uniform(size=(4, 2, 16, 16, 1)) > 0.5).astype(np.float32)
    straight, _ = _unet_run(config, (images, masks))
    _, path = _unet_run(config, (images[:2], masks[:2]), checkpoint_dir=str(tmp_path))
    resumed, _ = _unet_run(config, (images[2:], masks[2:]), restore=path)
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
