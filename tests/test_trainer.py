"""The trainer end to end on tiny records: learning, outputs, precision, NaN, resume; and its
host-side parts (steps per call, the reporter) without training.

In-process tests use the one-device strategy; tests that need logical CPU devices or
several processes run `isic-train` in subprocesses (see test_trainer_distributed.py).
"""

import csv
import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config

from core import options
from core.errors import UserError
from launch.training import checkpoints
from launch.training import report
from launch.training import run_identity
from launch.training import steps as steps_lib
from launch.training import trainer
from launch.training.config import TrainConfig
from model import unet
from preprocessing import tiny_records

BASE = TrainConfig(
    batch_size=4,
    base_filters=4,
    depth=2,
    strategy="one_device",
    precision="float32",
    summary_images=2,
    learning_rate=3e-3,
    plots=False,  # each costs seconds per run; test_training_lowers_loss_... writes them
    saved_model=False,
)


def _train(records, model_dir, **changes):
    return trainer.train(records, model_dir, dataclasses.replace(BASE, **changes), verbose=False)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records"))
    tiny_records.write_records(out, {"train": 16, "val": 4, "test": 4}, size=32)
    return out


@pytest.fixture(scope="module")
def one_epoch_run(records, tmp_path_factory):
    """A model directory after one epoch (4 steps); tests copy it before changing it.

    Cosine schedule: its rate comes from the config, not from the checkpoint (a constant
    rate is an optimizer variable, restored on resume), so a resumed run can change it."""
    model_dir = str(tmp_path_factory.mktemp("one_epoch") / "run")
    _train(records, model_dir, epochs=1, lr_schedule="cosine")
    return model_dir


def test_training_lowers_loss_and_writes_every_output(records, tmp_path):
    model_dir = str(tmp_path / "run")
    config = dataclasses.replace(
        BASE,
        epochs=4,
        checkpoint_every_steps=3,
        bn_momentum=0.8,
        augment_strength=0.5,
        plots=True,
        saved_model=True,
    )
    row = trainer.train(records, model_dir, config, verbose=False)
    with open(os.path.join(model_dir, "config.json")) as f:
        assert options.from_dict(TrainConfig, json.load(f)) == config
    with open(os.path.join(model_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    for key in ("val_loss", "val_dice", "val_accuracy", "val_jaccard", "dice", "accuracy"):
        assert 0.0 <= float(rows[-1][key]) <= 2.0, key
    assert row["epoch"] == 4 and row["step"] == 16 and row["chief"]
    for name in (
        "config.json",
        "loss.png",
        "accuracy.png",
        "dice.png",
        "ISIC-UNet.keras",
        "best/ISIC-UNet.keras",
        "checkpoints/run.json",
    ):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0, name
    assert not os.path.exists(os.path.join(model_dir, "flags.txt"))
    # Checkpoints at every 3rd step and at epoch ends (4, 8, ...); the newest 3 are kept.
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "ckpt-12",
        "ckpt-15",
        "ckpt-16",
    ]
    events = [f for d, _, fs in os.walk(os.path.join(model_dir, "logs")) for f in fs]
    assert len(events) >= 2
    # The exported models load and agree with each other.
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    final = keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras"))
    assert {
        layer.momentum for layer in final.layers if isinstance(layer, keras.layers.BatchNormalization)
    } == {0.8}
    serving = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    np.testing.assert_allclose(final.predict(x, verbose=0), serving.serve(x).numpy(), atol=1e-5)
    assert row["weights_sha256"] == trainer.weights_digest(final)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_output(records, tmp_path, precision):
    model_dir = str(tmp_path / precision)
    row = _train(records, model_dir, epochs=1, precision=precision)
    assert np.isfinite(row["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    model = keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras"))
    assert model.output.dtype == "float32"
    # --noplots, --nosaved_model (the tests' BASE): neither is written.
    assert not [
        n for n in ("loss.png", "dice.png", "saved_model") if os.path.exists(os.path.join(model_dir, n))
    ]
    variables = [
        name
        for name, _ in tf.train.list_variables(
            tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        )
    ]
    # Only float16 needs (and checkpoints) a dynamic loss scale.
    assert any("dynamic_scale" in v for v in variables) == (precision == "mixed_float16")


def _weights(model_dir):
    return keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras")).get_weights()


def test_resume_at_epoch_boundary_is_bit_identical(records, tmp_path):
    """With --ema_decay: the trained weights (the row's digest) and their moving average
    (what the final model holds) both continue bit for bit."""
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    first = _train(records, full, epochs=2, deterministic=True, ema_decay=0.8)
    assert not tf_framework_config.is_op_determinism_enabled()  # restored afterwards
    _train(records, split, epochs=1, deterministic=True, ema_decay=0.8)
    row = _train(records, split, epochs=2, deterministic=True, ema_decay=0.8)
    assert row["step"] == 8 and row["weights_sha256"] == first["weights_sha256"]
    for a, b in zip(_weights(full), _weights(split)):
        np.testing.assert_array_equal(a, b)
    saved = keras.models.load_model(os.path.join(split, "ISIC-UNet.keras"))
    assert trainer.weights_digest(saved) != row["weights_sha256"]  # the average, not the weights
    best = keras.models.load_model(os.path.join(split, "best", "ISIC-UNet.keras"))
    assert trainer.weights_digest(best) != row["weights_sha256"]
    with open(os.path.join(split, "history.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    with open(os.path.join(split, "config.json")) as f:  # rewritten by every run
        assert json.load(f)["epochs"] == 2
    # Nothing left to train: the last recorded row comes back, the weights stay.
    again = _train(records, split, epochs=2, deterministic=True, ema_decay=0.8)
    assert again["epoch"] == 2 and again["weights_sha256"] == row["weights_sha256"]


def test_nan_stops_training_and_keeps_last_checkpoint(records, one_epoch_run, tmp_path):
    model_dir = str(tmp_path / "nan")
    shutil.copytree(one_epoch_run, model_dir)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    before = {f: os.path.getmtime(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)}
    # Resumed with a learning rate far too high: the weights blow up at step 5, and the
    # loss of step 6 is NaN.
    with pytest.raises(trainer.NonFiniteLossError, match="at step 6.*ckpt-4"):
        _train(
            records, model_dir, epochs=3, checkpoint_every_steps=0, lr_schedule="cosine", learning_rate=1e30
        )
    after = {f: os.path.getmtime(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir)}
    assert after == before  # nothing written, the good checkpoint untouched
    assert issubclass(trainer.NonFiniteLossError, UserError)


def test_changing_model_shape_is_a_clear_error(records, one_epoch_run):
    model_dir = one_epoch_run  # the checks fail before anything is written
    with open(os.path.join(model_dir, "config.json")) as f:
        written = f.read()
    with pytest.raises(run_identity.CheckpointMismatchError, match="base_filters=4"):
        _train(records, model_dir, epochs=2, base_filters=8)
    with pytest.raises(run_identity.CheckpointMismatchError, match="batch_size"):
        _train(records, model_dir, epochs=2, batch_size=8)
    with pytest.raises(run_identity.CheckpointMismatchError, match="depth=2, but this run asks for depth=3"):
        _train(records, model_dir, epochs=2, depth=3)
    with pytest.raises(UserError, match="--depth 6 halves the image 6 times, so it must be a multiple of 64"):
        _train(records, model_dir, epochs=2, depth=6)  # 32x32 records
    with pytest.raises(UserError, match="--depth 3 applies to --encoder unet only"):
        dataclasses.replace(BASE, encoder="efficientnet_lite0", depth=3)
    assert TrainConfig().depth == unet.DEPTH  # the option's default is the network's
    with pytest.raises(run_identity.CheckpointMismatchError, match="0.0; resuming with --ema_decay 0.9"):
        _train(records, model_dir, epochs=2, lr_schedule="cosine", ema_decay=0.9)
    with open(os.path.join(model_dir, "config.json")) as f:
        assert f.read() == written
    assert issubclass(run_identity.CheckpointMismatchError, UserError)


def test_warm_start_loads_weights_into_a_new_run(records, one_epoch_run, tmp_path):
    source = one_epoch_run
    target = str(tmp_path / "target")
    model = keras.models.load_model(os.path.join(source, "ISIC-UNet.keras"))
    # lr 0 keeps the weights; BN moving statistics still move, so compare conv kernels only.
    _train(records, target, epochs=1, warm_start=source, learning_rate=0.0)
    warmed = keras.models.load_model(os.path.join(target, "ISIC-UNet.keras"))
    kernels = [
        (a.kernel.numpy(), b.kernel.numpy())
        for a, b in zip(model.layers, warmed.layers)
        if isinstance(a, keras.layers.Conv2D)
    ]
    assert len(kernels) == 11  # depth 2: 2 x 2 down, 2 at the bottom, 2 x 2 up, the output
    for a, b in kernels:
        np.testing.assert_array_equal(a, b)
    with pytest.raises(checkpoints.MissingCheckpointError, match="no such file"):
        _train(records, str(tmp_path / "other"), epochs=1, warm_start=str(tmp_path / "nowhere"))


def test_too_few_records_for_one_batch_is_a_user_error(records, tmp_path):
    with pytest.raises(UserError, match="fewer than one global batch of 32"):
        _train(records, str(tmp_path / "run"), epochs=1, batch_size=32)


# --- Host-side parts, without training.


def _calls(planner, start, end, seconds=0.0):
    """The steps per call from global step `start` to `end`, each call taking `seconds`."""
    calls, step = [], start
    while step < end:
        n = planner.next(step)
        planner.record(n, seconds)
        calls.append(n)
        step += n
    return calls


def test_steps_per_call_double_while_fast_up_to_the_cap():
    planner = steps_lib.StepsPerCall(
        steps_per_epoch=1000, checkpoint_every_steps=0, steps_per_execution=0, auto=True
    )
    assert _calls(planner, 0, 1000)[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]
    slow = steps_lib.StepsPerCall(1000, 0, 0, auto=True)
    assert _calls(slow, 0, 5, seconds=1.0) == [1] * 5  # calls of >= 0.2 s do not grow


def test_steps_per_call_stop_at_checkpoints_and_epoch_ends():
    planner = steps_lib.StepsPerCall(
        steps_per_epoch=10, checkpoint_every_steps=4, steps_per_execution=0, auto=True
    )
    # Epoch 1 from step 0: 1, 2, then 1 to reach checkpoint 4, 4 to 8, 2 to the epoch end.
    assert _calls(planner, 0, 10) == [1, 2, 1, 4, 2]
    assert [s for s in range(1, 21) if planner.checkpoint_due(s)] == [4, 8, 12, 16]  # not 20
    # A resumed run (step 13) stops at 16 and 20 with its fixed chunk.
    fixed = steps_lib.StepsPerCall(10, 4, steps_per_execution=8, auto=True)
    assert _calls(fixed, 13, 20) == [3, 4]


def test_steps_per_call_fixed_or_multi_worker_never_grows():
    fixed = steps_lib.StepsPerCall(10, 0, steps_per_execution=3, auto=True)
    assert _calls(fixed, 0, 10) == [3, 3, 3, 1]
    workers = steps_lib.StepsPerCall(100, 0, steps_per_execution=0, auto=False)
    assert _calls(workers, 0, 4) == [1, 1, 1, 1]


def _cadence(planner, start, end, seconds_per_step, agree=lambda pace: pace):
    """Runs `planner` like the trainer from `start` to `end`; returns its checkpoint steps.
    The first call takes 30 s (tracing); `agree` stands for the all-reduce of the pace."""
    saved, step, first = [], start, True
    while step < end:
        n = planner.next(step)
        planner.record(n, 30.0 if first else n * seconds_per_step)
        first, step = False, step + n
        if planner.checkpoint_due(step):
            saved.append(step)
        if planner.plan_due(step):
            planner.plan(step, agree(planner.pace()))
    return saved


def test_time_cadence_checkpoints_by_training_time_at_agreed_steps():
    # 10 s of training at 0.125 s/step = 80 steps. The pace is first measured over the
    # CADENCE_PROBE_STEPS (20) after the start, without the tracing call.
    planner = steps_lib.StepsPerCall(1000, 0, 4, auto=False, checkpoint_every_seconds=10.0)
    assert _cadence(planner, 0, 400, 0.125) == [100, 180, 260, 340]
    # Two workers with different clocks agree on the mean pace (0.1 s/step: 100 steps)
    # and so checkpoint at the same steps; their own clocks would not.
    fast = steps_lib.StepsPerCall(1000, 0, 4, auto=False, checkpoint_every_seconds=10.0)
    slow = steps_lib.StepsPerCall(1000, 0, 4, auto=False, checkpoint_every_seconds=10.0)
    assert (
        _cadence(fast, 0, 200, 0.075, agree=lambda pace: 0.1)
        == _cadence(slow, 0, 200, 0.125, agree=lambda pace: 0.1)
        == [120]
    )
    # A resumed run probes from its step (150 + 40 = 190); the epoch end at 200 (checkpointed
    # anyway) re-plans: 240, 280.
    epochs = steps_lib.StepsPerCall(100, 0, 4, auto=False, checkpoint_every_seconds=5.0, first_step=130)
    assert _cadence(epochs, 130, 300, 0.125) == [190, 240, 280]
    # --checkpoint_every_steps replaces the time cadence.
    steps = steps_lib.StepsPerCall(1000, 50, 4, auto=False, checkpoint_every_seconds=10.0)
    assert _cadence(steps, 0, 200, 0.125) == [50, 100, 150, 200]


def test_reporter_of_other_workers_writes_nothing(tmp_path):
    model_dir = str(tmp_path / "run")
    silent = report.create(model_dir, chief=False, verbose=True)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(1, 1)])
    silent.start(BASE, {"steps_per_epoch": 2}, model, start_epoch=0)
    silent.epoch_start(0, 0)
    silent.chunk(1, 1, {"loss": 1.0, "dice": 0.5, "count": 4.0}, 10.0)
    silent.epoch_end({"epoch": 1, "step": 2, "loss": 1.0, "val_dice": 0.5}, model, None)
    silent.finish(model)
    assert not silent.chief and silent.last_row() == {}
    assert not os.path.exists(model_dir)
    assert report.create(model_dir, chief=True, verbose=False).chief


def test_steps_per_call_stop_at_a_profiled_range():
    planner = steps_lib.StepsPerCall(100, 0, steps_per_execution=8, auto=False, stops=(3, 6))
    assert _calls(planner, 0, 22) == [3, 3, 8, 8]  # calls end exactly at steps 3 and 6


def test_profile_steps_must_be_an_increasing_pair():
    assert dataclasses.replace(BASE, profile_steps="2,5").profile_range == (2, 5)
    for bad in ("5,2", "3", "a,b", "-1,2"):
        with pytest.raises(UserError, match="--profile_steps"):
            dataclasses.replace(BASE, profile_steps=bad)


def test_profile_steps_write_a_trace_of_those_steps(records, tmp_path):
    model_dir = str(tmp_path / "run")
    _train(records, model_dir, epochs=2, profile_steps="2,4", summary_images=0)
    traces = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(model_dir, "logs"))
        for f in names
        if f.endswith(".xplane.pb")
    ]
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
