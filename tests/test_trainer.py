"""The trainer end to end on tiny records: learning, outputs, precision, NaN, resume.

In-process tests use the one-device strategy; tests that need logical CPU devices or
several processes run `isic-train` in subprocesses (see test_trainer_distributed.py).
"""

import csv
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from launch.training import checkpoints
from launch.training import steps as steps_lib
from launch.training import trainer
from tests import factory

TINY = dict(batch_size=4, base_filters=4, strategy="one_device", precision="float32",
            num_summary_images=2, verbose=False, learning_rate=3e-3)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records"))
    factory.write_records(out, {"train": 16, "val": 4, "test": 4}, size=32)
    return out


@pytest.fixture(scope="module")
def one_epoch_run(records, tmp_path_factory):
    """A model directory after one epoch (4 steps); tests copy it before changing it."""
    model_dir = str(tmp_path_factory.mktemp("one_epoch") / "run")
    trainer.train(records, model_dir, epochs=1, **TINY)
    return model_dir


def test_training_lowers_loss_and_writes_every_output(records, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    seen = []  # augmentation options of every training dataset the trainer builds
    real_make_dataset = trainer.dataset_lib.make_dataset

    def spy(*args, **kwargs):
        if kwargs.get("training"):
            seen.append(kwargs["augment_options"])
        return real_make_dataset(*args, **kwargs)

    monkeypatch.setattr(trainer.dataset_lib, "make_dataset", spy)
    chunks = []  # steps per train_steps call: auto chunking (the default) grows them
    real_make_train_steps = steps_lib.make_train_steps

    def counting_train_steps(*args, **kwargs):
        train_steps = real_make_train_steps(*args, **kwargs)

        def call(iterator, num_steps):
            chunks.append(int(num_steps))
            return train_steps(iterator, num_steps)
        return call

    monkeypatch.setattr(trainer.steps_lib, "make_train_steps", counting_train_steps)
    row = trainer.train(records, model_dir, epochs=4, checkpoint_every_steps=3,
                        flags_text="--epochs=4\n", bn_momentum=0.8, augment_strength=0.5, **TINY)
    assert len(seen) == 4 and all(o["rotation_degrees"] == 7.5 for o in seen)
    # 4 epochs of 4 steps, chunks cut at the checkpoint boundaries (every 3 steps).
    assert sum(chunks) == 16 and max(chunks) > 1 and len(chunks) < 16
    with open(os.path.join(model_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    for key in ("val_loss", "val_dice", "val_accuracy", "val_jaccard", "dice", "accuracy"):
        assert 0.0 <= float(rows[-1][key]) <= 2.0, key
    assert row["epoch"] == 4 and row["step"] == 16
    for name in ("flags.txt", "loss.png", "accuracy.png", "dice.png", "ISIC-UNet.keras",
                 "best/ISIC-UNet.keras", "checkpoints/run.json"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0, name
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-16")
    events = [f for d, _, fs in os.walk(os.path.join(model_dir, "logs")) for f in fs]
    assert len(events) >= 2
    # The exported models load and agree with each other.
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    final = keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras"))
    assert {layer.momentum for layer in final.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.8}
    serving = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    np.testing.assert_allclose(final.predict(x, verbose=0), serving.serve(x).numpy(), atol=1e-5)
    assert row["weights_sha256"] == trainer.weights_digest(final)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_output(records, tmp_path, precision):
    model_dir = str(tmp_path / precision)
    args = dict(TINY, precision=precision)
    row = trainer.train(records, model_dir, epochs=1, **args)
    assert np.isfinite(row["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    model = keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras"))
    assert model.output.dtype == "float32"
    variables = [name for name, _ in tf.train.list_variables(
        tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))]
    # Only float16 needs (and checkpoints) a dynamic loss scale.
    assert any("dynamic_scale" in v for v in variables) == (precision == "mixed_float16")


def _weights(model_dir):
    return keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras")).get_weights()


def test_resume_at_epoch_boundary_is_bit_identical(records, tmp_path):
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    trainer.train(records, full, epochs=2, deterministic=True, **TINY)
    trainer.train(records, split, epochs=1, deterministic=True, **TINY)
    row = trainer.train(records, split, epochs=2, deterministic=True, **TINY)
    assert row["step"] == 8
    for a, b in zip(_weights(full), _weights(split)):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(split, "history.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_nan_stops_training_and_keeps_last_checkpoint(records, one_epoch_run, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "nan")
    shutil.copytree(one_epoch_run, model_dir)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    before = {f: os.path.getmtime(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)}
    # Simulate divergence: the resumed run's loss is NaN from its first step.
    original = steps_lib.losses.bce_dice_loss
    monkeypatch.setattr(steps_lib.losses, "bce_dice_loss",
                        lambda t, p, dice_weight=1.0: original(t, p, dice_weight) * float("nan"))
    with pytest.raises(trainer.NonFiniteLossError, match="ckpt-4"):
        trainer.train(records, model_dir, epochs=3, checkpoint_every_steps=1, **TINY)
    after = {f: os.path.getmtime(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)}
    assert after == before  # nothing written, the good checkpoint untouched


def test_changing_model_shape_is_a_clear_error(records, one_epoch_run):
    model_dir = one_epoch_run  # the checks fail before anything is written
    with pytest.raises(checkpoints.CheckpointMismatchError, match="base_filters=4"):
        trainer.train(records, model_dir, epochs=2, **dict(TINY, base_filters=8))
    with pytest.raises(checkpoints.CheckpointMismatchError, match="batch_size"):
        trainer.train(records, model_dir, epochs=2, **dict(TINY, batch_size=8))


def test_warm_start_loads_weights_into_a_new_run(records, one_epoch_run, tmp_path):
    source = one_epoch_run
    target = str(tmp_path / "target")
    model = keras.models.load_model(os.path.join(source, "ISIC-UNet.keras"))
    # lr 0 keeps the weights; BN moving statistics still move, so compare conv kernels only.
    trainer.train(records, target, epochs=1, warm_start=source, **dict(TINY, learning_rate=0.0))
    warmed = keras.models.load_model(os.path.join(target, "ISIC-UNet.keras"))
    kernels = [(a.kernel.numpy(), b.kernel.numpy()) for a, b in zip(model.layers, warmed.layers)
               if isinstance(a, keras.layers.Conv2D)]
    assert len(kernels) == 19
    for a, b in kernels:
        np.testing.assert_array_equal(a, b)
