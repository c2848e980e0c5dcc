"""--ema_decay's moving average of the weights (launch/training/weight_average.py), step by
step on one device. The trainer's use of it is tested with the runs it changes: resume
(test_trainer.py) and data-parallel training on 2 logical CPUs and 2 workers
(test_trainer_distributed.py)."""

import numpy as np
import pytest
import tensorflow as tf

from launch.training import build
from launch.training import weight_average
from launch.training.config import TrainConfig

CONFIG = TrainConfig(batch_size=2, base_filters=2, ema_decay=0.5, precision="float32", strategy="one_device")


def _floats(model):
    return [v.numpy().copy() for v in model.variables if v.value.dtype.is_floating]


def test_the_average_follows_every_step_with_its_warmup():
    """After the n-th step (0-based) the average is d * average + (1 - d) * weights with
    d = min(0.5, n / (n + 10)): the first step copies, batch-norm statistics included."""
    strategy = tf.distribute.get_strategy()
    tf.random.set_seed(0)
    model, optimizer = build.model_and_optimizer(strategy, CONFIG, 16, 2, "float32", depth=1)
    average = build.average_for(strategy, CONFIG, model, 16, depth=1)
    steps = build.make_steps(strategy, model, optimizer, CONFIG, average=average)
    images = tf.random.uniform([12, 16, 16, 3])
    masks = tf.cast(tf.random.uniform([12, 16, 16, 1]) > 0.5, tf.float32)
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, masks)).batch(2))
    expected = None
    for n in range(6):
        steps.train(iterator, 1)
        weights = _floats(model)
        d = min(0.5, n / (n + weight_average.WARMUP_OFFSET))
        expected = weights if expected is None else [d * e + (1 - d) * w for e, w in zip(expected, weights)]
        for got, want in zip(_floats(average.model), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert int(average.updates.numpy()) == 6
    moving_stats = [v for v in average.model.non_trainable_variables if "moving" in v.path]
    assert moving_stats and len(_floats(average.model)) > len(average.model.trainable_variables)
    # Late steps blend: the average is not the last weights (the test would pass on a copy).
    assert any(not np.allclose(a, w) for a, w in zip(_floats(average.model), _floats(model)))


def test_a_decay_outside_the_open_interval_is_refused():
    strategy = tf.distribute.get_strategy()
    model, _ = build.model_and_optimizer(strategy, CONFIG, 16, 2, "float32", depth=1)
    with pytest.raises(ValueError, match="decay"):
        weight_average.WeightAverage(model, build.build_model(CONFIG, 16, 1), 1.0)
    assert build.average_for(strategy, TrainConfig(), model, 16, depth=1) is None  # off by default
