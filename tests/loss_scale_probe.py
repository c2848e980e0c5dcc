"""Runs the trainer's steps (launch/training/build.py) on crafted batches; prints one JSON line.

Run as `python -m tests.loss_scale_probe --devices N --steps "1;0;all;none"` (mirrored over
N logical CPUs) or with TF_CONFIG set and `--devices 1` (one worker of
MultiWorkerMirroredStrategy): tests/test_loss_scaling.py and tests/test_xla.py start it in
subprocesses, since logical devices and cluster membership are fixed for a process's
lifetime. `--precision` (mixed_float16 by default) and `--jit_compile off,on` (each
setting trains a model of its own from the same seed, in this order) choose the runs.

--steps lists one training step per entry, each naming the replicas whose gradients
overflow ("none", "all" or replica ids like "1" or "0,3"): those replicas get masks of 1e6
instead of 0/1. Their loss stays finite in float32 (|loss| about 1e5-1e6), but its
gradient times the loss scale (2**15) exceeds float16's maximum (65504) where it flows
back into the float16 layers, so their gradients hold inf. Before the first step and
after each one the line records, per --jit_compile setting, the loss scale, the inner optimizer's iterations,
whether all weights are finite, whether every replica holds the same trainable weights,
and their digest (to compare workers, and a skipped step with the one before); at the end
the trainable weights themselves (a few hundred numbers).
"""

import argparse
import functools
import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from launch.training import build
from launch.training import distribute
from launch.training.config import TrainConfig

SIZE, PER_REPLICA = 16, 2
HUGE_MASK = 1e6


def _tiny_model() -> keras.Model:
    """float16 convolutions and batch norm with a float32 sigmoid, like model/unet.py's
    output, in a few layers: the step under test is the same, its trace far shorter."""
    inputs = keras.Input((SIZE, SIZE, 3))
    # No bias before batch norm, as in model/unet.py: its gradient is zero up to rounding.
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(1, 1)(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Activation("sigmoid", dtype="float32")(x))


def _batch(replica: int, bad: bool):
    """(images [b,S,S,3], masks [b,S,S,1]) of one replica; values differ per replica."""
    rng = np.random.default_rng(replica)
    images = rng.uniform(0, 1, (PER_REPLICA, SIZE, SIZE, 3)).astype(np.float32)
    masks = (rng.uniform(0, 1, (PER_REPLICA, SIZE, SIZE, 1)) > 0.5).astype(np.float32)
    return images, masks * HUGE_MASK if bad else masks


def _dataset(steps: list, ctx: tf.distribute.InputContext):
    """This input pipeline's per-replica batches, step by step (`steps`: one set of
    overflowing replica ids per step). A pipeline feeding k replicas yields their batches
    in replica order."""
    local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    replicas = [ctx.input_pipeline_id * local + r for r in range(local)]
    elements = [_batch(r, r in overflow) for overflow in steps for r in replicas]
    images, masks = (np.stack(parts) for parts in zip(*elements))
    return tf.data.Dataset.from_tensor_slices((images, masks))


def _state(strategy, model, optimizer) -> dict:
    """Trainable weights only: batch-norm moving statistics are updated by every forward
    pass, skipped step or not, and per replica unless batch norm is synchronized."""
    per_replica = [
        [v.numpy() for v in strategy.experimental_local_results(w.value)] for w in model.trainable_weights
    ]  # [variable][replica]
    first = [values[0] for values in per_replica]
    return {
        "scale": float(optimizer.dynamic_scale.numpy()) if hasattr(optimizer, "dynamic_scale") else 1.0,
        "iterations": int(optimizer.iterations.numpy()),
        "finite": all(bool(np.isfinite(w.numpy()).all()) for w in model.weights),
        "replicas_identical": all(np.array_equal(values[0], v) for values in per_replica for v in values[1:]),
        "digest": hashlib.sha256(b"".join(w.tobytes() for w in first)).hexdigest(),
    }


def _train(strategy, steps: list, precision: str, jit_compile: str) -> dict:
    """One run of `steps` from seed 0: its states, and the final trainable weights."""
    keras.utils.set_random_seed(0)
    n = strategy.num_replicas_in_sync
    config = TrainConfig(batch_size=PER_REPLICA * n, learning_rate=1e-3, jit_compile=jit_compile)
    with strategy.scope():  # as build.model_and_optimizer does, with the tiny model
        model = _tiny_model()
        optimizer = build.optimizer_for(model, config, 1, precision)
    train_steps = build.make_steps(strategy, model, optimizer, config).train
    iterator = iter(distribute.distribute_datasets(strategy, functools.partial(_dataset, steps)))
    states = [_state(strategy, model, optimizer)]
    for _ in steps:
        totals = train_steps(iterator, 1)
        states.append(dict(_state(strategy, model, optimizer), loss=totals["loss"]))
    weights = [w.numpy().ravel().tolist() for w in model.trainable_weights]
    return {"states": states, "weights": weights}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", default="none")
    parser.add_argument("--precision", default="mixed_float16")
    parser.add_argument("--jit_compile", default="off", help="comma-separated: off, on")
    args = parser.parse_args()
    distribute.split_cpu(args.devices)
    keras.mixed_precision.set_global_policy(args.precision)
    strategy = distribute.make_strategy(
        "multi_worker" if os.environ.get("TF_CONFIG") else "mirrored", collective_timeout=60
    )
    n = strategy.num_replicas_in_sync
    named = {"none": set(), "all": set(range(n))}
    steps = [named[s] if s in named else {int(r) for r in s.split(",")} for s in args.steps.split(";")]
    runs = {jit: _train(strategy, steps, args.precision, jit) for jit in args.jit_compile.split(",")}
    first = next(iter(runs.values()))
    print("PROBE " + json.dumps({"replicas": n, "states": first["states"], "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
