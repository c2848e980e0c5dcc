"""`isic-train` in subprocesses: mirrored over 2 logical CPUs and 2 worker processes under
MultiWorkerMirroredStrategy on 127.0.0.1, against one device. (SIGKILL and resume,
bit-identical: tests/test_chaos.py, which kills a run during a save.)

To compare a data-parallel run with one device exactly, the global batch is the whole
training split (one step per epoch, so the order of examples cannot matter), batch norm
is synchronized and augmentation is off; the results then agree within float tolerance.
"""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from launch.cluster import addresses
from preprocessing import tiny_records
from tests.conftest import PROJECT_ROOT
from tests.conftest import trainer_env


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records"))
    tiny_records.write_records(out, {"train": 16, "val": 4}, size=32)
    return out


def _cmd(records, model_dir, *extra):
    return [
        sys.executable,
        "-m",
        "launch.commands.train",
        f"--data_dir={records}",
        f"--model_dir={model_dir}",
        "--base_filters=4",
        "--depth=2",
        "--precision=float32",
        "--summary_images=0",
        "--seed=3",
        *extra,
    ]


def _run(cmd, env=None, timeout=240):
    proc = subprocess.run(
        cmd, env=env or trainer_env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(model_dir):
    return keras.models.load_model(os.path.join(model_dir, "ISIC-UNet.keras")).get_weights()


def _history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _assert_close(a_dir, b_dir):
    """Same losses per epoch, weights equal up to rounding amplified by Adam.

    Unsynchronised batch norm or other examples per step change the very first loss in
    the 2nd-3rd digit; summation order changes it in the 6th. Weights are compared by
    their median difference: Adam moves every weight by about +-lr per step whatever
    its gradient's size, so gradients within rounding of 0 can flip a few weights by up
    to 2 lr (3 steps of lr 1e-3 here) while the rest agree far more closely.
    """
    for ra, rb in zip(_history(a_dir), _history(b_dir), strict=True):
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(float(ra[key]), float(rb[key]), rtol=1e-3)
    a = np.concatenate([w.ravel() for w in _weights(a_dir)])
    b = np.concatenate([w.ravel() for w in _weights(b_dir)])
    assert np.median(np.abs(a - b)) < 2e-4


# --ema_decay: validation and the final model then read the weights' moving average, so the
# comparisons below also check that every replica and worker keeps it the same way.
WHOLE_BATCH = ("--batch_size=16", "--epochs=3", "--noaugment", "--sync_batch_norm", "--ema_decay=0.5")


@pytest.fixture(scope="module")
def one_device(records, tmp_path_factory):
    """The one-device run both data-parallel runs are compared with (trained once)."""
    model_dir = str(tmp_path_factory.mktemp("one_device"))
    _run(_cmd(records, model_dir, "--strategy=one_device", *WHOLE_BATCH))
    return model_dir


def test_mirrored_over_two_cpus_matches_one_device(records, one_device, tmp_path):
    mirrored = str(tmp_path / "mirrored")
    out = _run(_cmd(records, mirrored, "--strategy=mirrored", "--num_cpu_devices=2", *WHOLE_BATCH))
    assert "2 replica" in out.stderr
    _assert_close(one_device, mirrored)


def test_two_worker_processes_train_identical_weights(records, one_device, tmp_path):
    multi = str(tmp_path / "multi")
    workers = [f"127.0.0.1:{p}" for p in addresses.find_free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(
            subprocess.Popen(
                _cmd(records, multi, "--strategy=multi_worker", *WHOLE_BATCH),
                env=trainer_env(TF_CONFIG=tf_config),
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    digests = [[line for line in out.splitlines() if line.startswith("weights sha256")] for out, _ in outs]
    assert digests[0] and digests[0] == digests[1]
    # Only the chief writes into the model directory.
    assert sorted(os.listdir(multi)) == sorted(
        [
            "ISIC-UNet.keras",
            "best",
            "checkpoints",
            "config.json",
            "history.csv",
            "logs",
            "saved_model",
            "loss.png",
            "accuracy.png",
            "dice.png",
            "preprocessing.json",
            ".isic-train.lock",
        ]
    )
    _assert_close(one_device, multi)
