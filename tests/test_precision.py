"""Precision: what `--precision auto` picks (issue 19, part 2) and resuming a run under
another precision (part 7): float32 <-> mixed_float16 <-> mixed_bfloat16."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from launch.training import build
from launch.training import checkpoints
from launch.training import distribute
from launch.training import run_identity
from launch.training import trainer
from launch.training.config import TrainConfig
from preprocessing import tiny_records

ZEN4_FLAGS = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
)
SAPPHIRE_RAPIDS_FLAGS = "flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
OLD_CPU_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ([(9, 0)], "mixed_bfloat16"),
        ([(8, 0), (8, 6)], "mixed_bfloat16"),
        ([(7, 0)], "mixed_float16"),
        ([(7, 5)], "mixed_float16"),
        ([(8, 0), (7, 5)], "mixed_float16"),  # the lowest GPU decides
        ([(6, 0)], "float32"),
        ([(8, 0), (6, 1)], "float32"),
    ],
)
def test_auto_precision_on_gpus_follows_the_lowest_compute_capability(capabilities, expected):
    chosen, why = distribute.choose_precision(capabilities, distribute.cpu_flags(ZEN4_FLAGS))
    assert chosen == expected
    lowest = min(capabilities)
    assert f"compute capability {lowest[0]}.{lowest[1]}" in why


def test_auto_precision_on_cpus_reads_the_bf16_flags():
    assert distribute.cpu_flags(ZEN4_FLAGS) == {
        "fpu",
        "sse2",
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
    }
    assert distribute.cpu_flags("no flags here") == set()
    # Native bf16 is detected, named and used (validated: docs/performance.md); without
    # that validation it would be named but not used.
    for text, flag in ((ZEN4_FLAGS, "avx512_bf16"), (SAPPHIRE_RAPIDS_FLAGS, "amx_bf16")):
        chosen, why = distribute.choose_precision([], distribute.cpu_flags(text))
        assert chosen == "mixed_bfloat16" and flag in why
        chosen, why = distribute.choose_precision([], distribute.cpu_flags(text), cpu_bf16_validated=False)
        assert chosen == "float32" and flag in why and "not yet measured" in why
    chosen, why = distribute.choose_precision([], distribute.cpu_flags(OLD_CPU_FLAGS))
    assert chosen == "float32" and "without native bfloat16" in why


def _build(precision):
    """A tiny U-Net and its optimizer from the trainer's builder (Adam, in a
    LossScaleOptimizer under mixed_float16)."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision)
    try:
        config = TrainConfig(base_filters=2, precision=precision)
        model, optimizer = build.model_and_optimizer(tf.distribute.get_strategy(), config, 16, 1, precision)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=tf.Variable(0, dtype=tf.int64))
    return checkpoint, getattr(optimizer, "inner_optimizer", optimizer)


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@pytest.mark.parametrize("saved, resumed", [(a, b) for a in PRECISIONS for b in PRECISIONS if a != b])
def test_restore_under_another_precision_keeps_weights_and_optimizer_state(tmp_path, saved, resumed):
    checkpoint, adam = _build(saved)
    rng = np.random.default_rng(0)
    for v in checkpoint.model.weights + adam.variables:  # every value distinct from a new run's
        v.assign(rng.uniform(1, 2, v.shape).astype(v.dtype))
    checkpoint.step.assign(7)
    checkpoints.Saver(checkpoint, str(tmp_path), chief=True).save(7)
    fresh, fresh_adam = _build(resumed)
    assert checkpoints.restore_latest(fresh, str(tmp_path)).endswith("ckpt-7")
    assert int(fresh.step.numpy()) == 7
    for a, b in zip(
        checkpoint.model.weights + adam.variables, fresh.model.weights + fresh_adam.variables, strict=True
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    if resumed == "mixed_float16":  # the loss scale starts as in a new run
        assert float(fresh.optimizer.dynamic_scale.numpy()) == 2.0**15


def test_a_float32_run_resumes_under_mixed_float16(tmp_path, caplog):
    """The case of the issue: a float32 run resumed where `auto` picks mixed_float16 (a GPU
    of compute capability 7.x), through the trainer; the other directions restore alike
    (test above)."""
    records, model_dir = str(tmp_path / "records"), str(tmp_path / "run")
    tiny_records.write_records(records, {"train": 8, "val": 2}, size=16)
    config = TrainConfig(
        batch_size=4,
        base_filters=2,
        depth=2,
        strategy="one_device",
        summary_images=0,
        verify_records="none",
        plots=False,
        saved_model=False,
    )
    with caplog.at_level("WARNING"):
        for epochs, precision in ((1, "float32"), (2, "mixed_float16")):
            row = trainer.train(
                records,
                model_dir,
                dataclasses.replace(config, epochs=epochs, precision=precision),
                verbose=False,
            )
            assert row["step"] == 2 * epochs and np.isfinite(row["loss"]), precision
    assert "started under --precision float32; resuming under mixed_float16" in caplog.text
    with open(os.path.join(model_dir, "checkpoints", "run.json")) as f:
        assert json.load(f)["precision"] == "float32"  # the one the run started with
    variables = [
        name
        for name, _ in tf.train.list_variables(
            tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        )
    ]
    assert "optimizer/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE" in variables


def test_run_json_without_a_precision_resumes_under_any(tmp_path, caplog):
    identity = {
        "image_size": 16,
        "base_filters": 2,
        "depth": 4,
        "batch_size": 4,
        "steps_per_epoch": 2,
        "seed": 0,
    }  # a run.json from before issue 19
    os.makedirs(tmp_path / "checkpoints")
    with open(tmp_path / "checkpoints" / "run.json", "w") as f:
        json.dump(identity, f)
    with caplog.at_level("WARNING"):
        for precision in PRECISIONS:
            run_identity.check_run(str(tmp_path), dict(identity, encoder="unet", precision=precision))
        assert "started under" not in caplog.text
        run_identity.write_run(str(tmp_path), dict(identity, precision="float32"))  # left as it is
    with open(tmp_path / "checkpoints" / "run.json") as f:
        assert "precision" not in json.load(f)
