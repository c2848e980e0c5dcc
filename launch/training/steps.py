"""Distributed train and eval steps: one code path for every tf.distribute strategy.

`model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 / Keras 3.15
(keras#20585), so training uses `strategy.run` on a per-replica step. The loss is the
per-image loss averaged over the GLOBAL batch (`tf.nn.compute_average_loss`), and the
Keras 3 optimizer sums gradients across replicas, so the update equals that of one
device seeing the whole global batch.

Both step functions run several steps per `tf.function` call (like Keras'
`steps_per_execution`): the Python loop then costs one call per chunk, not per step.
They return metric SUMS over the images seen (reduced over replicas), so averages over
an epoch are exact whatever the chunking.
"""

import keras
import tensorflow as tf

from model import losses
from model import metrics

METRIC_KEYS = ("loss", "accuracy", "dice", "jaccard", "count")


def _per_image_sums(masks, probs, per_image_loss, weights):
    """Sums of per-image loss and ISIC scores (thresholded at 0.5), weighted by `weights` [b]."""
    # float32 counts are exact at training sizes (< 2**24 pixels per image).
    scores = metrics.batch_scores(masks, probs, dtype=tf.float32)
    return {
        "loss": tf.reduce_sum(per_image_loss * weights),
        "accuracy": tf.reduce_sum(scores["accuracy"] * weights),
        "dice": tf.reduce_sum(scores["dice"] * weights),
        "jaccard": tf.reduce_sum(scores["jaccard"] * weights),
        "count": tf.reduce_sum(weights),
    }


def _zeros() -> dict:
    return {k: tf.constant(0.0) for k in METRIC_KEYS}


def _add_reduced(strategy, totals: dict, per_replica: dict) -> dict:
    """totals + the per-replica values summed over all replicas (a cross-replica reduce)."""
    return {k: totals[k] + strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[k], axis=None)
            for k in METRIC_KEYS}


def make_train_steps(strategy: tf.distribute.Strategy, model: keras.Model,
                     optimizer: keras.optimizers.Optimizer, global_batch_size: int,
                     dice_weight: float = 1.0):
    """Returns `train_steps(iterator, num_steps) -> dict of float32 sums` (a tf.function).

    The iterator is a distributed iterator of (images [b,S,S,3], masks [b,S,S,1]).
    """
    scale_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, masks):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)  # float32 [b,S,S,1], even under mixed precision
            per_image = losses.bce_dice_loss(masks, probs, dice_weight=dice_weight)  # float32 [b]
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
            # Dynamic loss scaling keeps float16 gradients from underflowing; the optimizer
            # unscales them and skips the update (lowering the scale) when they overflow.
            scaled = optimizer.scale_loss(loss) if scale_loss else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        weights = tf.ones_like(per_image)
        return _per_image_sums(masks, tf.stop_gradient(probs), per_image, weights)

    # autograph=False: the loop is an explicit tf.while_loop, and converting the model's
    # Python code with autograph would cost tens of seconds of tracing on every start.
    @tf.function(autograph=False)
    def train_steps(iterator, num_steps):
        def body(i, totals):
            images, masks = next(iterator)
            out = strategy.run(replica_step, args=(images, masks))
            return i + 1, _add_reduced(strategy, totals, out)
        return tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), _zeros()))[1]

    return train_steps


def make_eval_steps(strategy: tf.distribute.Strategy, model: keras.Model, dice_weight: float = 1.0):
    """Returns `eval_steps(iterator, num_steps) -> dict of float32 sums` (a tf.function).

    The iterator yields (images, masks, weights [b]); padding examples have weight 0, so
    the sums cover every real example exactly once.
    """

    def replica_step(images, masks, weights):
        probs = model(images, training=False)
        per_image = losses.bce_dice_loss(masks, probs, dice_weight=dice_weight)
        return _per_image_sums(masks, probs, per_image, weights)

    @tf.function(autograph=False)
    def eval_steps(iterator, num_steps):
        def body(i, totals):
            images, masks, weights = next(iterator)
            out = strategy.run(replica_step, args=(images, masks, weights))
            return i + 1, _add_reduced(strategy, totals, out)
        return tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0), _zeros()))[1]

    return eval_steps


def means(totals: dict) -> dict:
    """Turns metric sums into per-image means (host floats)."""
    count = max(float(totals["count"]), 1.0)
    return {k: float(totals[k]) / count for k in METRIC_KEYS if k != "count"}
