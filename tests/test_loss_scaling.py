"""Dynamic loss scaling under mixed_float16 agrees across replicas and workers (issue 19).

The first three run tests/loss_scale_probe.py in subprocesses (logical CPU devices and
cluster membership are fixed per process). Its crafted steps make the gradients of chosen
replicas overflow in float16 through the data alone (masks of 1e6 on those replicas'
shards), so the steps under test are the real `make_train_steps` with Keras'
LossScaleOptimizer (on a few-layer model: the U-Net's own float16 path is trained in
tests/test_trainer.py).
"""

import json
import math
import os
import subprocess
import sys

from launch.cluster import addresses
from tests.conftest import PROJECT_ROOT

# Replica 1 only, replica 0 only, every replica, then two normal steps.
SEQUENCE = "1;0;all;none;none"


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=PROJECT_ROOT)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _probe(devices: int, steps: str, env=None, extra=()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.loss_scale_probe", f"--devices={devices}", f"--steps={steps}", *extra],
        env=env or _env(),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _states(proc: subprocess.Popen, timeout=600, key="states") -> list | dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])[key]


def _assert_skips_then_trains(states):
    """SEQUENCE: three skipped steps (each halves the scale once, weights untouched), then
    two applied ones; every replica always holds the same finite weights."""
    assert [s["scale"] for s in states] == [32768.0, 16384.0, 8192.0, 4096.0, 4096.0, 4096.0]
    assert [s["iterations"] for s in states] == [0, 0, 0, 0, 1, 2]
    assert all(s["finite"] and s["replicas_identical"] for s in states)
    digests = [s["digest"] for s in states]
    assert digests[0] == digests[1] == digests[2] == digests[3] != digests[4] != digests[5]
    assert all(math.isfinite(s["loss"]) for s in states[1:])  # only the gradients overflowed


def test_overflow_on_any_mirrored_replica_skips_the_step_on_all():
    _assert_skips_then_trains(_states(_probe(2, SEQUENCE)))


def test_overflow_on_one_of_eight_mirrored_replicas_skips_then_trains():
    states = _states(_probe(8, "5;none;none"))
    assert [s["scale"] for s in states] == [32768.0, 16384.0, 16384.0, 16384.0]
    assert [s["iterations"] for s in states] == [0, 0, 1, 2]
    assert all(s["finite"] and s["replicas_identical"] for s in states)
    assert states[0]["digest"] == states[1]["digest"] != states[2]["digest"] != states[3]["digest"]


def test_overflow_on_one_worker_skips_the_step_on_both():
    workers = [f"127.0.0.1:{p}" for p in addresses.find_free_ports(2)]
    procs = [
        _probe(
            1,
            SEQUENCE,
            _env(
                TF_CONFIG=json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
                )
            ),
            extra=["--jit_compile=off,on"],  # and again with each replica's step XLA-compiled
        )
        for index in range(2)
    ]
    runs = [_states(p, key="runs") for p in procs]
    for jit in ("off", "on"):
        for worker in runs:
            _assert_skips_then_trains(worker[jit]["states"])
        assert runs[0][jit] == runs[1][jit]  # same scale, iterations and weights on both workers


def test_scale_doubles_after_growth_steps_and_halves_on_overflow_in_process():
    """One device (the default strategy, in this process): the same step and bookkeeping."""
    import keras
    import numpy as np
    import tensorflow as tf

    from launch.training import steps as steps_lib
    from model import losses
    from model import unet

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = unet.build_unet(16, 2, bn_momentum=0.9)
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam(1e-3), initial_scale=1024.0, dynamic_growth_steps=2
        )
        optimizer.build(model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (5, 2, 16, 16, 3)).astype(np.float32)
    masks = (rng.uniform(0, 1, (5, 2, 16, 16, 1)) > 0.5).astype(np.float32)
    masks[2] *= 1e6  # the 3rd step overflows (see tests/loss_scale_probe.py)
    train_steps = steps_lib.make_train_steps(
        tf.distribute.get_strategy(), model, optimizer, 2, losses.training_loss()
    )
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, masks)))
    scales = []
    for _ in range(5):
        train_steps(iterator, 1)
        scales.append(float(optimizer.dynamic_scale.numpy()))
    # grow after 2 good steps, halve on the overflow, grow again after 2 more good steps
    assert scales == [1024.0, 2048.0, 1024.0, 1024.0, 2048.0]
    assert int(optimizer.iterations.numpy()) == 4
