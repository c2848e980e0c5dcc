"""Faults a cluster job meets, one test each: damaged records, two runs in one model
directory, SIGTERM, writes the disk refuses, and bad values at the edges.

Writes the disk refuses are real refusals of the kernel, made without mounting anything:
a file-size limit for a full disk, a folder without write permission (root's override
dropped for the test's thread) for a read-only one.
"""

import contextlib
import ctypes
import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from core import files
from core import locks
from core.errors import UserError
from launch import layout
from launch.inference import models
from launch.training import checkpoints
from launch.training import faults
from launch.training import preemption
from launch.training import run_identity
from launch.training import steps as steps_lib
from launch.training import trainer
from launch.training.config import TrainConfig
from model import losses
from pipeline import dataset as dataset_lib
from pipeline import records as records_lib
from preprocessing import build
from preprocessing import manifest as manifest_lib
from preprocessing import synth
from preprocessing import tiny_records
from preprocessing.config import BuildConfig

BASE = TrainConfig(
    batch_size=4,
    base_filters=4,
    depth=2,
    strategy="one_device",
    precision="float32",
    summary_images=0,
    checkpoint_every_steps=2,
    epochs=1,
    plots=False,  # seconds per run; the tests that need them turn them on
    saved_model=False,
)


def _train(records, model_dir, **changes):
    return trainer.train(records, model_dir, dataclasses.replace(BASE, **changes), verbose=False)


@pytest.fixture(scope="module")
def clean_records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records") / "r")
    tiny_records.write_records(out, {"train": 16, "val": 4}, size=32, shards_per_split=2)
    return out


@pytest.fixture
def records(clean_records, tmp_path):
    """A private copy of the records, free to damage."""
    out = str(tmp_path / "records")
    shutil.copytree(clean_records, out)
    return out


@pytest.fixture(scope="module")
def one_epoch_run(clean_records, tmp_path_factory):
    """A model directory after one epoch (4 steps, checkpoints 2 and 4); copy before use."""
    model_dir = str(tmp_path_factory.mktemp("one_epoch") / "run")
    _train(clean_records, model_dir, saved_model=True)
    return model_dir


def _shard(records, split="train", index=0):
    return os.path.join(records, manifest_lib.shard_name(split, index, 2))


def _edit_manifest(records, edit):
    path = os.path.join(records, manifest_lib.MANIFEST_NAME)
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _timed(fn):
    """(exception raised by fn(), seconds until it was raised)."""
    start = time.perf_counter()
    with pytest.raises(Exception) as caught:
        fn()
    return caught.value, time.perf_counter() - start


# --- Damaged records.


def test_a_corrupt_byte_stops_before_training_naming_the_shard(records, tmp_path):
    shard = _shard(records)
    with open(shard, "r+b") as f:  # one byte inside the first record's payload
        f.seek(12 + 100)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    model_dir = str(tmp_path / "run")
    error, seconds = _timed(lambda: _train(records, model_dir))
    print(f"corrupt byte: stopped {seconds:.2f} s after the start: {error}")
    assert isinstance(error, records_lib.RecordsError) and isinstance(error, UserError)
    message = str(error)
    assert "train-00000-of-00002.tfrecord: its sha256 differs" in message
    # The rebuild command repeats the recorded options that differ from the defaults.
    assert message.endswith(
        f"--output_dir {records} --image_size 32 --splits 0.8,0.2,0 --num_shards 2 --overwrite"
    )
    assert not os.path.exists(os.path.join(model_dir, "config.json"))  # nothing written


def test_a_truncated_shard_is_found_by_the_size_check(records, tmp_path):
    shard = _shard(records, "val", 1)
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 100)
    with pytest.raises(records_lib.RecordsError, match=r"val-00001-of-00002.tfrecord: truncated"):
        _train(records, str(tmp_path / "run"), verify_records="size")


def test_a_wrong_sha256_in_the_manifest_is_reported(records, tmp_path):
    def edit(manifest):
        manifest["shards"]["val"][0]["sha256"] = "0" * 64

    _edit_manifest(records, edit)
    with pytest.raises(
        records_lib.RecordsError,
        match=r"val-00000-of-00002.tfrecord: its sha256 "
        r"differs from manifest.json's",
    ):
        _train(records, str(tmp_path / "run"))
    # --verify_records none trusts the manifest: the run trains.
    assert _train(records, str(tmp_path / "trusting"), verify_records="none")["step"] == 4


def test_hand_edited_record_counts_are_found_by_the_size_check(records, tmp_path):
    def edit(manifest):  # consistent with each other, not with the shard
        manifest["shards"]["train"][1]["records"] += 1
        manifest["counts"]["train"] += 1

    _edit_manifest(records, edit)
    with pytest.raises(
        records_lib.RecordsError,
        match="train-00001-of-00002.tfrecord: it holds 8 records but manifest.json says 9",
    ):
        _train(records, str(tmp_path / "run"), verify_records="size")


def test_corruption_met_while_training_names_the_shard_and_keeps_the_checkpoint(
    records, one_epoch_run, tmp_path
):
    model_dir = str(tmp_path / "run")
    shutil.copytree(one_epoch_run, model_dir)
    before = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
    with open(_shard(records), "r+b") as f:  # damage a payload, keep the framing
        f.seek(40)
        f.write(b"\xff" * 8)
    # Without the sha256 check the damage is met by the reader, in the resumed epoch 2.
    with pytest.raises(records_lib.RecordsError) as caught:
        _train(records, model_dir, epochs=2, verify_records="size")
    message = str(caught.value)
    assert "a shard is corrupt" in message and "train-00000-of-00002.tfrecord: its sha256" in message
    assert (
        f"Training stopped at step 4; the last checkpoint ({model_dir}/checkpoints/ckpt-4) is kept" in message
    )
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == before


# --- One run per model directory.


def test_a_second_run_is_refused_naming_the_holder(clean_records, tmp_path):
    model_dir = str(tmp_path / "run")
    with locks.exclusive(model_dir, trainer.LOCK_FILE, "isic-train", advice="wait"):
        holder = locks.holder_of(model_dir, trainer.LOCK_FILE)
        error, seconds = _timed(lambda: _train(clean_records, model_dir))
    print(f"second run: refused {seconds:.2f} s after its start: {error}")
    assert isinstance(error, locks.LockedError) and isinstance(error, UserError)
    assert holder.pid == os.getpid() and holder.host == socket.gethostname()
    assert (
        f"{model_dir} is in use by isic-train (pid {os.getpid()} on {socket.gethostname()}, "
        f"started {holder.started})"
    ) in str(error)
    assert os.listdir(model_dir) == [trainer.LOCK_FILE]  # the refused run wrote nothing
    assert _train(clean_records, model_dir)["step"] == 4  # free again afterwards
    assert locks.holder_of(model_dir, trainer.LOCK_FILE) is None


def test_a_stale_lock_of_a_dead_process_is_taken_over(clean_records, tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free now: the lock it "held" is stale
    stale = locks.Holder(socket.gethostname(), dead.pid, "2025-01-01 00:00:00 +0000", "isic-train")
    with open(os.path.join(model_dir, trainer.LOCK_FILE), "w") as f:
        json.dump(dataclasses.asdict(stale), f)
    with caplog.at_level("WARNING"):
        assert _train(clean_records, model_dir)["step"] == 4
    assert f"left by {stale.describe()}: pid {dead.pid} is gone" in caplog.text


def test_the_builder_refuses_a_second_build_naming_the_holder(tmp_path):
    source = str(tmp_path / "source")
    synth.write_dataset(source, num_images=4, seed=0, num_workers=1)
    output = str(tmp_path / "out")
    inputs = [(os.path.join(source, "images"), os.path.join(source, "masks"))]
    with locks.exclusive(output, ".isic-preprocess.lock", "isic-preprocess", advice="wait"):
        with pytest.raises(
            build.BuildError,
            match=rf"{output} is in use by isic-preprocess "
            rf"\(pid {os.getpid()} on ",
        ):
            build.build_records(inputs, output, BuildConfig(image_size=16, num_workers=1), progress=False)


# --- SIGTERM and SIGINT.


@pytest.fixture
def survive_signals():
    """A late SIGTERM (after the trainer restored the handlers) must not end pytest."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def _signal_when(path, signum=signal.SIGTERM):
    """Sends `signum` to this process as soon as `path` exists (from a thread)."""

    def run():
        deadline = time.monotonic() + 120
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_mid_epoch_checkpoints_and_resumes_bit_identical(records, tmp_path, survive_signals):
    config = {"epochs": 2, "deterministic": True, "checkpoint_every_steps": 3}
    reference = _train(records, str(tmp_path / "reference"), **config)
    model_dir = str(tmp_path / "stopped")
    # The signal comes right after the checkpoint of step 3 (epoch 1 has 4 steps): the run
    # stops at step 3, or after the step in flight when the next call already started.
    _signal_when(os.path.join(model_dir, "checkpoints", "ckpt-3.index"))
    with pytest.raises(preemption.Stopped) as caught:
        _train(records, model_dir, **config)
    stopped = caught.value
    print(f"SIGTERM: {stopped}")
    assert stopped.exit_status == 143 and stopped.signum == signal.SIGTERM
    assert 3 <= stopped.step < 8 and stopped.step != 4, stopped.step  # mid-epoch
    assert stopped.checkpoint == os.path.join(model_dir, "checkpoints", f"ckpt-{stopped.step}")
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")) == stopped.checkpoint
    assert not os.path.exists(os.path.join(model_dir, "ISIC-UNet.keras"))
    resumed = _train(records, model_dir, **config)  # the same command
    assert resumed["step"] == 8 and resumed["weights_sha256"] == reference["weights_sha256"]
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the test's handler is back


def test_a_stop_signal_ends_a_long_call_after_the_step_in_flight(clean_records):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")]
    )
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    records = records_lib.Records.open(clean_records)
    batches = dataset_lib.make_dataset(records, "train", batch_size=4, training=True).repeat()
    saved = []
    # Not always Python's default: a shell that starts the suite in the background
    # ignores SIGINT for it (SIG_IGN), and LocalStop must put back whatever was there.
    before = signal.getsignal(signal.SIGINT)
    with preemption.LocalStop() as stop:
        stop.attach(None, save=lambda: saved.append("ckpt") or "ckpt-x", step=lambda: 7)
        train_steps = steps_lib.make_train_steps(
            strategy, model, optimizer, 4, losses.training_loss(), stop=stop.flag
        )
        train_steps(iter(batches), 1)  # traced before the clock starts
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        totals = train_steps(iter(batches), 10**7)  # hours, without the signal
        seconds = time.perf_counter() - start
        with pytest.raises(
            preemption.Stopped,
            match=r"stopped by SIGINT at step 7; its checkpoint is ckpt-x\. "
            r"Run the same command",
        ):
            stop.after_chunk()
    assert 0 < totals["count"] / 4 < 10**7 and seconds < 10, (totals["count"], seconds)
    assert saved == ["ckpt"]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_sigterm_during_validation_stops_within_a_call_and_the_resumed_run_validates_again(
    clean_records, tmp_path, survive_signals, monkeypatch
):
    config = {"deterministic": True, "checkpoint_every_steps": 0}
    reference = _train(clean_records, str(tmp_path / "reference"), **config)
    real = dataset_lib.make_dataset
    sent = []

    def val_sends_sigterm(records, split, **kwargs):
        """The validation split, sending SIGTERM while its first batch is read."""
        dataset = real(records, split, **kwargs)
        if split != "val":
            return dataset

        def send(*batch):
            if not sent:
                sent.append(time.perf_counter())
                os.kill(os.getpid(), signal.SIGTERM)
            return batch

        def send_keeping_shapes(*b):
            out = tf.py_function(send, b, [t.dtype for t in b])
            return tuple(tf.ensure_shape(o, t.shape) for o, t in zip(out, b))

        return dataset.map(send_keeping_shapes)

    monkeypatch.setattr(dataset_lib, "make_dataset", val_sends_sigterm)
    model_dir = str(tmp_path / "stopped")
    with pytest.raises(preemption.Stopped) as caught:
        _train(clean_records, model_dir, **config)
    stopped = caught.value
    seconds = time.perf_counter() - sent[0]
    print(f"SIGTERM during validation: stopped {seconds:.2f} s later: {stopped}")
    assert stopped.step == 4 and stopped.exit_status == 143  # the epoch's last step
    assert stopped.checkpoint == _ckpt(model_dir, "ckpt-4") and seconds < 30
    assert not os.path.exists(os.path.join(model_dir, "history.csv"))  # no row yet
    monkeypatch.setattr(dataset_lib, "make_dataset", real)
    resumed = _train(clean_records, model_dir, **config)  # the same command
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert resumed["val_dice"] == reference["val_dice"] and resumed["epoch"] == 1
    assert "loss" not in resumed  # the training means of the stopped epoch are lost


# --- Writes the disk refuses, without mounting anything (tests run as root in containers
# that may not mount): a file-size limit (RLIMIT_FSIZE, `ulimit -f`) makes the kernel
# refuse a write past it with EFBIG as a full disk refuses one with ENOSPC; a folder
# without write permission, with root's override of permissions dropped, refuses a new
# file with EACCES as a read-only filesystem does with EROFS. faults.writing and the lock
# treat every such errno alike (test_write_failures_become_user_errors_naming_the_path).


@contextlib.contextmanager
def _file_size_limit(limit_bytes: int):
    """Writes that would make a file larger than `limit_bytes` fail with EFBIG ("File too
    large") in this process meanwhile; SIGXFSZ, which would kill it, is ignored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


# linux/capability.h: capget/capset's header version and the two bits root's file
# access rests on; capabilities are per thread, so the rest of the process keeps them.
_CAPABILITY_VERSION_3 = 0x20080522
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _set_effective_capabilities(drop: int) -> None:
    """Makes this thread's effective capabilities its permitted ones without the bits
    `drop` (0: all of them again). A no-op for users without capabilities."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective = data[0].permitted & ~drop
    if libc.capset(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capset")


@contextlib.contextmanager
def _unwritable(folder: str):
    """Nothing in `folder` can be written by this thread meanwhile (no write permission on
    it or anything in it, as on a read-only filesystem), also when the tests run as root."""
    modes = {}
    for parent, _, names in os.walk(folder):
        for path in [parent] + [os.path.join(parent, n) for n in names]:
            modes[path] = os.stat(path).st_mode
            os.chmod(path, modes[path] & ~0o222)
    _set_effective_capabilities(1 << _CAP_DAC_OVERRIDE | 1 << _CAP_DAC_READ_SEARCH)
    try:
        yield
    finally:
        _set_effective_capabilities(0)
        for path, mode in modes.items():
            os.chmod(path, mode)


def test_a_refused_write_during_a_checkpoint_stops_and_keeps_the_previous_one(clean_records, tmp_path):
    model_dir = str(tmp_path / "run")
    _train(clean_records, model_dir)  # checkpoints 2 and 4, the models
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    # Room for logs, history and plots, not for a checkpoint's data file.
    limit = os.path.getsize(os.path.join(ckpt_dir, "ckpt-4.data-00000-of-00001")) // 2
    with _file_size_limit(limit):
        error, seconds = _timed(lambda: _train(clean_records, model_dir, epochs=2))
    print(f"write refused: stopped {seconds:.2f} s after the start: {error}")
    assert isinstance(error, faults.OutputError) and isinstance(error, UserError)
    assert (
        f"cannot write the checkpoint {ckpt_dir}/ckpt-6: File too large. The previous "
        f"checkpoint {ckpt_dir}/ckpt-4 is intact"
    ) in str(error)
    assert tf.train.latest_checkpoint(ckpt_dir) == os.path.join(ckpt_dir, "ckpt-4")
    assert not [n for n in os.listdir(ckpt_dir) if "temp" in n]  # the half-written one is gone
    reader = tf.train.load_checkpoint(os.path.join(ckpt_dir, "ckpt-4"))
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
    keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras"))


def test_a_refused_write_during_the_export_keeps_the_previous_models(clean_records, tmp_path):
    model_dir = str(tmp_path / "run")
    deeper = 4  # enough weights for the SavedModel's variables to outweigh the .keras file
    _train(clean_records, model_dir, depth=deeper, saved_model=True)
    saved = os.path.join(model_dir, "saved_model")
    before = {n: os.path.getsize(os.path.join(saved, n)) for n in os.listdir(saved)}
    # Room for the .keras file (written first, then renamed over the old one), not for
    # the SavedModel's variables.
    keras_bytes = os.path.getsize(os.path.join(model_dir, "ISIC-UNet.keras"))
    variables_bytes = os.path.getsize(os.path.join(saved, "variables", "variables.data-00000-of-00001"))
    assert keras_bytes < variables_bytes
    with _file_size_limit((keras_bytes + variables_bytes) // 2):
        error, seconds = _timed(lambda: _train(clean_records, model_dir, depth=deeper, saved_model=True))
    print(f"export with writes refused: stopped after {seconds:.2f} s: {error}")
    assert isinstance(error, faults.OutputError)
    assert f"cannot write the SavedModel {saved}: File too large" in str(error)
    assert "The previous saved_model is intact" in str(error)
    assert {n: os.path.getsize(os.path.join(saved, n)) for n in os.listdir(saved)} == before
    assert not [n for n in os.listdir(model_dir) if ".tmp" in n or n.endswith(".old")]
    served = tf.saved_model.load(saved)
    x = np.zeros((1, 32, 32, 3), np.float32)
    np.testing.assert_allclose(
        served.serve(x).numpy(),
        keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras")).predict(x, verbose=0),
        atol=1e-5,
    )


def test_an_unwritable_model_dir_stops_at_once_and_inference_refuses_it_early(clean_records, tmp_path):
    model_dir = str(tmp_path / "run")
    _train(clean_records, model_dir)
    with _unwritable(model_dir):
        error, seconds = _timed(lambda: _train(clean_records, model_dir, epochs=2))
        print(f"unwritable model dir: stopped after {seconds:.2f} s: {error}")
        assert isinstance(error, UserError)
        assert f"cannot create the lock file {model_dir}/{trainer.LOCK_FILE}: Permission denied" in str(error)
        with pytest.raises(UserError, match="cannot write to the output folder .*Permission denied"):
            files.ensure_writable(os.path.join(model_dir, "eval-test"))  # isic-evaluate, isic-predict
    keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras"))


def test_write_failures_become_user_errors_naming_the_path():
    for error in (
        PermissionError(13, "Permission denied"),
        OSError(28, "No space left on device"),
        OSError(27, "File too large"),
        tf.errors.PermissionDeniedError(None, None, "/m/x_temp; Permission denied [Op:SaveV2]"),
        tf.errors.OutOfRangeError(None, None, "/m/x_temp/part-0; File too large [Op:SaveV2]"),
    ):
        with pytest.raises(
            faults.OutputError,
            match=r"cannot write the plot /m/loss.png: "
            r"(Permission denied|No space left on device|File too large)\.",
        ):
            with faults.writing("plot", "/m/loss.png"):
                raise error
    # Failures that are not about the disk pass through untouched.
    with pytest.raises(tf.errors.UnavailableError):
        with faults.writing("checkpoint", "/m/checkpoints/ckpt-2"):
            raise tf.errors.UnavailableError(None, None, "peer worker 1 is gone")
    with pytest.raises(tf.errors.OutOfRangeError):  # a dataset's end names no output folder
        with faults.writing("checkpoint", "/m/checkpoints/ckpt-2"):
            raise tf.errors.OutOfRangeError(None, None, "End of sequence")


# --- Bad values at the edges.


def test_resuming_on_records_of_another_image_size_is_a_clear_error(one_epoch_run, tmp_path):
    other = str(tmp_path / "records-48")
    tiny_records.write_records(other, {"train": 16, "val": 4}, size=48)
    with pytest.raises(
        run_identity.CheckpointMismatchError,
        match=rf"{one_epoch_run} holds a model trained on 32x32 records, but these "
        r"records are 48x48. To resume, pass records built with "
        r"isic-preprocess --image_size 32",
    ):
        _train(other, one_epoch_run, epochs=2)


def test_an_empty_training_split_is_a_clear_error(tmp_path):
    out = str(tmp_path / "records")
    tiny_records.write_records(out, {"train": 0, "val": 4, "test": 4}, size=32)
    with pytest.raises(records_lib.RecordsError, match=r"split 'train' of .* is empty \(0 records"):
        _train(out, str(tmp_path / "run"))


def test_a_saved_model_or_h5_as_model_is_a_clear_error(one_epoch_run, tmp_path):
    saved = os.path.join(one_epoch_run, "saved_model")
    with pytest.raises(
        FileNotFoundError,
        match=rf"--model {saved} is a TensorFlow SavedModel .*"
        rf"pass {one_epoch_run}",
    ):
        layout.resolve_model_path(saved)
    h5 = str(tmp_path / "model.h5")
    keras.models.load_model(os.path.join(one_epoch_run, "ISIC-UNet.keras")).save(h5)
    with pytest.raises(FileNotFoundError, match=r"is a Keras HDF5 \(\.h5\) file"):
        layout.resolve_model_path(h5)


# --- Damaged checkpoints (resume never loses a trained run).


def _ckpt(model_dir, name=""):
    return os.path.join(model_dir, "checkpoints", name)


def _data_file(model_dir, number):
    return _ckpt(model_dir, f"ckpt-{number}.data-00000-of-00001")


def _damaged_names(model_dir):
    """The file names moved into checkpoints/damaged/<time>/ folders."""
    root = _ckpt(model_dir, "damaged")
    return sorted(
        n
        for d in (os.listdir(root) if os.path.isdir(root) else ())
        for n in os.listdir(os.path.join(root, d))
    )


def _step_checkpoints(model_dir, numbers):
    """Checkpoints of a bare step counter, written by the trainer's Saver (no model: cheap)."""
    step = tf.Variable(0, dtype=tf.int64)
    saver = checkpoints.Saver(
        tf.train.Checkpoint(step=step), model_dir, chief=True, max_to_keep=3, run={"seed": 0}
    )
    for number in numbers:
        step.assign(number)
        saver.save(number)


def _restore_step(model_dir):
    """(restored path, restored step) through checkpoints.restore_latest."""
    step = tf.Variable(-1, dtype=tf.int64)
    path = checkpoints.restore_latest(tf.train.Checkpoint(step=step), model_dir)
    return path, int(step.numpy())


@pytest.mark.parametrize("damage", ["half_data", "no_index"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one_and_is_kept(
    tmp_path, caplog, damage
):
    model_dir = str(tmp_path / "run")
    _step_checkpoints(model_dir, [6, 8, 9])
    if damage == "half_data":  # a disk that filled, a node that died mid-write, a partial copy
        os.truncate(_data_file(model_dir, 9), os.path.getsize(_data_file(model_dir, 9)) // 2)
    else:
        os.remove(_ckpt(model_dir, "ckpt-9.index"))
    with caplog.at_level("WARNING"):
        assert _restore_step(model_dir) == (_ckpt(model_dir, "ckpt-8"), 8)
    why = "ckpt-9.data-00000-of-00001 is cut short: " if damage == "half_data" else "ckpt-9.index is missing"
    assert f"checkpoint {_ckpt(model_dir, 'ckpt-9')} is damaged or unfinished (" in caplog.text
    assert why in caplog.text and f"resuming from {_ckpt(model_dir, 'ckpt-8')}" in caplog.text
    expected = (
        ["ckpt-9.data-00000-of-00001", "ckpt-9.index"]
        if damage == "half_data"
        else ["ckpt-9.data-00000-of-00001"]
    )
    assert _damaged_names(model_dir) == expected  # moved aside, never deleted
    assert tf.train.latest_checkpoint(_ckpt(model_dir)) == _ckpt(model_dir, "ckpt-8")
    _step_checkpoints(model_dir, [9])  # step 9 again: a fresh file, not the damaged one's
    assert _restore_step(model_dir) == (_ckpt(model_dir, "ckpt-9"), 9)


def test_a_damaged_newest_checkpoint_is_skipped_by_the_trainer(
    clean_records, one_epoch_run, tmp_path, caplog
):
    model_dir = str(tmp_path / "run")
    shutil.copytree(one_epoch_run, model_dir)
    os.truncate(_data_file(model_dir, 4), os.path.getsize(_data_file(model_dir, 4)) // 2)
    with caplog.at_level("WARNING"):
        row = _train(clean_records, model_dir)
    assert f"resuming from {_ckpt(model_dir, 'ckpt-2')}" in caplog.text
    assert "is cut short" in caplog.text
    assert row["step"] == 4 and _damaged_names(model_dir) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    reader = tf.train.load_checkpoint(_ckpt(model_dir, "ckpt-4"))  # trained again, intact
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 4


def test_a_run_without_an_intact_checkpoint_is_an_error_until_restart(
    clean_records, one_epoch_run, tmp_path, caplog
):
    model_dir = str(tmp_path / "run")
    shutil.copytree(one_epoch_run, model_dir)
    for number in (2, 4):
        os.truncate(_data_file(model_dir, number), 10)
    before = sorted(os.listdir(_ckpt(model_dir)))
    with pytest.raises(checkpoints.NoUsableCheckpointError) as caught:
        _train(clean_records, model_dir, epochs=2)
    message = str(caught.value)
    print(message)
    assert message.startswith(
        f"{model_dir} holds a training run but no usable checkpoint: "
        f"{_ckpt(model_dir, 'ckpt-4.data-00000-of-00001')} ("
    )
    assert "is cut short: 10 bytes, its index expects" in message
    for path in (
        _ckpt(model_dir, "checkpoint"),
        _ckpt(model_dir, "run.json"),
        os.path.join(model_dir, "history.csv"),
    ):
        assert path in message
    assert "pass --restart" in message and "use another --model_dir" in message
    assert sorted(os.listdir(_ckpt(model_dir))) == before  # nothing moved or written
    # --restart begins again on purpose, keeping the old run.
    with caplog.at_level("WARNING"):
        row = _train(clean_records, model_dir, restart=True)
    assert (
        row["step"] == 4 and "--restart: moved the previous run's checkpoints and history.csv" in caplog.text
    )
    [replaced] = [n for n in os.listdir(model_dir) if n.startswith("replaced-")]
    assert sorted(os.listdir(os.path.join(model_dir, replaced, "checkpoints"))) == before


def test_a_first_save_cut_short_starts_a_new_run_with_a_warning(tmp_path, caplog):
    model_dir = str(tmp_path / "run")
    os.makedirs(_ckpt(model_dir, "ckpt-2_temp"))  # a kill during the very first checkpoint
    with open(_ckpt(model_dir, "ckpt-2_temp/part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * 100)
    with caplog.at_level("WARNING"):
        assert _restore_step(model_dir) == (None, -1)
    assert "ckpt-2 is damaged or unfinished (a save that never finished): moved to" in caplog.text
    assert "starting a new run" in caplog.text and _damaged_names(model_dir) == ["ckpt-2_temp"]
    # A data shard without any index, state file or run.json is such a save too; one more
    # file showing a run was saved makes it an error.
    _step_checkpoints(str(tmp_path / "other"), [3])
    os.remove(_ckpt(str(tmp_path / "other"), "ckpt-3.index"))
    with pytest.raises(
        checkpoints.NoUsableCheckpointError, match="holds a training run but no usable checkpoint"
    ):
        _restore_step(str(tmp_path / "other"))


def test_a_save_checks_the_files_before_naming_them_latest(one_epoch_run, tmp_path):
    """The state file names a checkpoint only once it is complete; a leftover file with
    the new checkpoint's name is moved aside, not overwritten."""
    model_dir = str(tmp_path / "run")
    shutil.copytree(one_epoch_run, model_dir)
    with open(_ckpt(model_dir, "ckpt-6.index"), "wb") as f:  # left by a crashed save
        f.write(b"leftover")
    step = tf.Variable(6, dtype=tf.int64)
    saver = checkpoints.Saver(
        tf.train.Checkpoint(step=step), model_dir, chief=True, last=_ckpt(model_dir, "ckpt-4"), max_to_keep=2
    )
    saver.save(6)
    assert _damaged_names(model_dir) == ["ckpt-6.index"]
    assert tf.train.latest_checkpoint(_ckpt(model_dir)) == _ckpt(model_dir, "ckpt-6")
    assert not os.path.exists(_ckpt(model_dir, "ckpt-2.index"))  # beyond max_to_keep
    with open(_ckpt(model_dir, "checkpoint")) as f:
        assert f.read() == (
            'model_checkpoint_path: "ckpt-6"\nall_model_checkpoint_paths: '
            '"ckpt-4"\nall_model_checkpoint_paths: "ckpt-6"\n'
        )
    # A filesystem that acknowledged a write it did not keep: found before it counts.
    real_write = tf.train.Checkpoint.write

    def short_write(self, prefix, options=None):
        path = real_write(self, prefix, options)
        os.truncate(path + ".data-00000-of-00001", 3)
        return path

    tf.train.Checkpoint.write = short_write
    try:
        with pytest.raises(
            faults.OutputError,
            match=r"the checkpoint .*ckpt-7 just written is "
            r"incomplete \(.*is cut short: 3 bytes",
        ):
            saver.save(7)
    finally:
        tf.train.Checkpoint.write = real_write
    assert tf.train.latest_checkpoint(_ckpt(model_dir)) == _ckpt(model_dir, "ckpt-6")
    assert not os.path.exists(_ckpt(model_dir, "ckpt-7.index"))


# --- Messages that name the right reason.


def test_a_model_dir_that_is_a_regular_file_is_reported_as_such(clean_records, tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    with pytest.raises(
        UserError,
        match=rf"^{path} is a file, not a folder; isic-train needs a "
        r"folder there: pass another path",
    ):
        _train(clean_records, str(path))
    assert path.read_text() == "not a folder"


def test_a_truncated_keras_file_is_reported_as_cut_short(one_epoch_run, tmp_path):
    path = str(tmp_path / "model.keras")
    shutil.copy(os.path.join(one_epoch_run, "ISIC-UNet.keras"), path)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(
        ValueError,
        match=rf"^{path} is not a complete \.keras file \(\d+ bytes, "
        r"not a zip archive: cut short or damaged\)",
    ) as caught:
        models.load_model(path)
    assert "not found" not in str(caught.value)


def test_tensorflow_cpp_noise_is_filtered_and_real_errors_are_kept(capfd):
    from launch import cli

    with cli.filtered_stderr():
        os.write(
            2,
            b"E0000 00:00:1.0 1 mkl_util.h:1] oneDNN supports DT_UINT8 only on "
            b"platforms with AVX-512. Falling back to the default implementation\n",
        )
        os.write(2, b"a real error\n")
    assert capfd.readouterr().err == "a real error\n"
