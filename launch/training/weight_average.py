"""An exponential moving average of the weights (`isic-train --ema_decay`).

The average lives in a second model of the same architecture (`WeightAverage.model`), so
validation, the best and the final model and the export read it like any model, while the
checkpoint keeps the trained weights and the average apart: a resume continues both
exactly, and no step ever swaps one set into the other.

Every float variable is averaged, the batch-norm moving statistics too, so the statistics
that normalise the averaged weights' activations come from the same window of steps. The
decay warms up: the n-th update (0-based) uses min(decay, n / (n + 10)), so the first one
copies the weights and the random initial weights never linger in the average (the
`num_updates` rule of tf.train.ExponentialMovingAverage, shifted by one).

Keras' own `use_ema` is not used: it averages only the trainable variables, and its result
reaches the model only by overwriting the trained weights (`finalize_variable_values`).
"""

import keras
import tensorflow as tf

# The warmup's offset: the decay reaches 0.9 after 90 updates, 0.99 after 990.
WARMUP_OFFSET = 10.0


class WeightAverage:
    """The moving average of `model`'s float variables, held in `average_model`.

    Create it inside the strategy's scope (its update counter is then mirrored like the
    models' variables); `checkpointed` is what the run's checkpoint saves under "average".
    """

    def __init__(self, model: keras.Model, average_model: keras.Model, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = average_model
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="average_updates")
        self.checkpointed = tf.train.Checkpoint(model=average_model, updates=self.updates)
        # A start, not a need: the first update copies the weights anyway (a warm start's,
        # restored after this).
        average_model.set_weights(model.get_weights())
        self._pairs = []  # (average, trained): the underlying tf.Variables, float only
        for avg, var in zip(average_model.variables, model.variables, strict=True):
            if avg.shape != var.shape or avg.path.split("/")[-1] != var.path.split("/")[-1]:
                raise ValueError(f"the average model does not match: {avg.path} vs {var.path}")
            if var.value.dtype.is_floating:
                self._pairs.append((avg.value, var.value))

    def update(self, strategy: tf.distribute.Strategy) -> tf.Operation:
        """Moves the average towards the current weights; call it in cross-replica context
        after the step's update (inside the step function). Each device blends its own
        copies, so no collective runs (every replica's weights are equal already)."""
        n = tf.cast(self.updates.read_value(), tf.float32)
        decay = tf.minimum(self.decay, n / (n + WARMUP_OFFSET))  # float32 []

        def blend(average, trained, decay):
            return average.assign(decay * average + (1.0 - decay) * tf.cast(trained, average.dtype))

        updates = [strategy.extended.update(avg, blend, args=(var, decay)) for avg, var in self._pairs]
        with tf.control_dependencies(tf.nest.flatten(updates)):
            return self.updates.assign_add(1)


def averaged(strategy: tf.distribute.Strategy, global_step, average: WeightAverage | None):
    """`global_step` (batch -> float32 [5] sums, cross-replica context), followed by the
    average's update when there is one."""
    if average is None:
        return global_step

    def step(batch):
        sums = global_step(batch)
        # The blend reads the variables the step has just updated: the automatic control
        # dependencies of the tf.function order the two on the shared resources; the
        # explicit one below keeps the sums from being returned before it.
        with tf.control_dependencies([sums]):
            done = average.update(strategy)
        with tf.control_dependencies([done]):
            return tf.identity(sums)

    return step
