"""Distributed train and eval steps: one code path for every tf.distribute strategy.

`model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 / Keras 3.15
(keras#20585), so training uses `strategy.run` on a per-replica step. The loss is the
per-image loss averaged over the GLOBAL batch (`tf.nn.compute_average_loss`), and the
Keras 3 optimizer sums gradients across replicas, so the update equals that of one
device seeing the whole global batch.

Both step functions run several steps per `tf.function` call (like Keras'
`steps_per_execution`; `StepsPerCall` decides how many): the Python loop then costs one
call per chunk, not per step. They return metric SUMS over the images seen (reduced over
replicas), so averages over an epoch are exact whatever the chunking.
"""

import keras
import tensorflow as tf

from launch.training.config import AUTO_CHUNK_SECONDS, MAX_AUTO_CHUNK
from model import losses
from model import metrics

METRIC_KEYS = ("loss", "accuracy", "dice", "jaccard", "count")  # the sums' order


def _per_image_sums(masks, probs, per_image_loss, weights=None) -> tf.Tensor:
    """float32 [5]: sums over the images of the METRIC_KEYS, each image weighted by
    `weights` [b] (0 for padding; None: all 1, the training batches). One vector, not five
    scalars: the loop then reduces and adds one tensor per step instead of five
    (docs/performance.md, loop overhead)."""
    scores = metrics.batch_scores(masks, probs)  # [b, 3]: accuracy, dice, jaccard
    ones = tf.ones_like(per_image_loss)[:, None]
    per_image = tf.concat([per_image_loss[:, None], scores, ones], axis=1)  # [b, 5]
    if weights is not None:
        per_image *= weights[:, None]
    return tf.reduce_sum(per_image, axis=0)


def _run_steps(strategy: tf.distribute.Strategy, replica_step, stop: tf.Variable | None = None):
    """`run_steps(iterator, num_steps: int) -> {METRIC_KEYS: host float}`: runs
    `replica_step(*next(iterator))` (which returns `_per_image_sums`) on every replica
    `num_steps` times in one tf.function call, summing over replicas and steps, and
    fetches the sums once. With `stop` (a bool variable), the loop also ends before any
    step that finds it True (a stop signal, launch/training/preemption.py): the sums then
    cover the steps run, and "count" tells how many."""

    # autograph=False: the loop is an explicit tf.while_loop, and converting the model's
    # Python code with autograph would make the tracing of every start much slower.
    @tf.function(autograph=False)
    def run_steps(iterator, num_steps):
        def more(i, _):
            if stop is None:
                return i < num_steps
            # Read afresh before every step: another thread sets it (preemption.py).
            return tf.logical_and(i < num_steps, tf.logical_not(stop.read_value()))

        def body(i, totals):  # totals: float32 [5]
            out = strategy.run(replica_step, args=tuple(next(iterator)))
            return i + 1, totals + strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)
        zeros = tf.zeros([len(METRIC_KEYS)], tf.float32)
        return tf.while_loop(more, body, (tf.constant(0), zeros))[1]

    def call(iterator, num_steps: int) -> dict:
        totals = run_steps(iterator, tf.constant(num_steps, tf.int32)).numpy()  # [5], one fetch
        return dict(zip(METRIC_KEYS, totals.tolist()))

    return call


def make_train_steps(strategy: tf.distribute.Strategy, model: keras.Model,
                     optimizer: keras.optimizers.Optimizer, global_batch_size: int,
                     dice_weight: float, stop: tf.Variable | None = None):
    """Returns `train_steps(iterator, num_steps: int) -> {METRIC_KEYS: sum}` (one tf.function call).

    The iterator is a distributed iterator of (images [b,S,S,3], masks [b,S,S,1]). With
    `stop`, a call ends early once it is True; it then ran count / global_batch_size steps.
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
        return _per_image_sums(masks, tf.stop_gradient(probs), per_image)

    return _run_steps(strategy, replica_step, stop)


def make_eval_steps(strategy: tf.distribute.Strategy, model: keras.Model, dice_weight: float,
                    stop: tf.Variable | None = None):
    """Returns `eval_steps(iterator, num_steps: int) -> {METRIC_KEYS: sum}` (one tf.function call).

    The iterator yields (images, masks, weights [b]); padding examples have weight 0, so
    the sums cover every real example exactly once. With `stop`, a call ends early once it
    is True, as training calls do (the sums are then partial and of no use).
    """

    def replica_step(images, masks, weights):
        probs = model(images, training=False)
        per_image = losses.bce_dice_loss(masks, probs, dice_weight=dice_weight)
        return _per_image_sums(masks, probs, per_image, weights)

    return _run_steps(strategy, replica_step, stop)


def means(totals: dict) -> dict:
    """Turns metric sums into per-image means."""
    count = max(totals["count"], 1.0)
    return {k: totals[k] / count for k in METRIC_KEYS if k != "count"}


class StepsPerCall:
    """Decides how many training steps each `train_steps` call runs (pure host logic).

    A call never crosses the end of an epoch or a checkpoint boundary (a multiple of
    `checkpoint_every_steps`), so checkpoints land on exactly those steps. With
    `steps_per_execution` 0 and `auto` (one process), the chunk starts at 1 and doubles
    after each full-size call faster than AUTO_CHUNK_SECONDS, up to MAX_AUTO_CHUNK: the
    fixed host work of a call (function call, metric fetch, TensorBoard scalar) then stays
    small beside the steps on fast devices, while progress still updates often on slow
    ones. Several workers must run the same steps per call and their timings differ, so
    their chunk never grows.
    """

    def __init__(self, steps_per_epoch: int, checkpoint_every_steps: int,
                 steps_per_execution: int, auto: bool, stops: tuple[int, ...] = ()):
        self._steps_per_epoch = steps_per_epoch
        self._every = checkpoint_every_steps
        self.chunk = steps_per_execution or 1
        self._grow = not steps_per_execution and auto
        self._stops = tuple(sorted(stops))  # extra boundaries, e.g. a profiled range

    def next(self, step: int) -> int:
        """Steps of the call that starts after global step `step`."""
        boundary = (step // self._steps_per_epoch + 1) * self._steps_per_epoch
        if self._every:
            boundary = min(boundary, (step // self._every + 1) * self._every)
        boundary = min([boundary] + [s for s in self._stops if s > step])
        return min(self.chunk, boundary - step)

    def record(self, num_steps: int, seconds: float) -> None:
        """Reports how long a call of `num_steps` took; may grow the chunk."""
        if self._grow and num_steps == self.chunk and seconds < AUTO_CHUNK_SECONDS:
            self.chunk = min(2 * self.chunk, MAX_AUTO_CHUNK)

    def checkpoint_due(self, step: int) -> bool:
        """A mid-epoch checkpoint boundary (epoch ends are checkpointed anyway)."""
        return bool(self._every) and step % self._every == 0 and step % self._steps_per_epoch != 0
