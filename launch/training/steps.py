"""Distributed train and eval steps: one code path for every tf.distribute strategy.

`model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 / Keras 3.15
(keras#20585), so training uses `strategy.run` on a per-replica step. The loss is the
per-image loss averaged over the GLOBAL batch (`tf.nn.compute_average_loss`), and the
Keras 3 optimizer sums gradients across replicas, so the update equals that of one
device seeing the whole global batch.

Under mixed_float16 the step does dynamic loss scaling itself (`_loss_scaled_step`) with
the state of Keras' `LossScaleOptimizer`, because Keras' `apply` decides "gradients are
finite" per replica or from the first replica only, before the all-reduce
(keras/src/optimizers/loss_scale_optimizer.py:263-278): an overflow on another replica
was applied (non-finite weights), and workers could disagree (mismatched collectives).
Here the non-finite count is summed over the cluster first, so every replica skips or
applies the same step and the scale halves once.

With `jit_compile`, each replica's computation (forward pass, loss, backward pass, metric
sums; launch/training/xla.py decides when) is one XLA cluster: a `tf.function(
jit_compile=True)` called inside `strategy.run`. What XLA cannot hold stays outside it,
in the enclosing graph: the gradient all-reduce and the update (`apply_gradients`, whose
all-reduce is a cross-replica `merge_call`), the reduce of the metric sums over replicas,
and the loss-scaling decision (a `tf.cond` in cross-replica context). Keras' own
`jit_compile` compiles the whole `train_step`, the all-reduce included, so Keras turns it
off under tf.distribute (keras/src/trainers/trainer.py, `_resolve_auto_jit_compile`).

Both step functions run several steps per `tf.function` call (like Keras'
`steps_per_execution`; `StepsPerCall` decides how many): the Python loop then costs one
call per chunk, not per step. They return metric SUMS over the images seen (reduced over
replicas), so averages over an epoch are exact whatever the chunking.
"""

from typing import Callable

import keras
import tensorflow as tf

from launch.training import weight_average
from launch.training import xla
from launch.training.config import AUTO_CHUNK_SECONDS
from launch.training.config import MAX_AUTO_CHUNK
from model import metrics

# (masks [b,S,S,1], probabilities [b,S,S,1]) -> float32 [b]: model.losses.training_loss(...)
LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

METRIC_KEYS = ("loss", "accuracy", "dice", "jaccard", "count")  # the sums' order
# Time-based checkpoints: the first pace is measured over this many steps after the start.
CADENCE_PROBE_STEPS = 20


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


def _run_steps(strategy: tf.distribute.Strategy, global_step, stop: tf.Variable | None = None):
    """`run_steps(iterator, num_steps: int) -> {METRIC_KEYS: host float}`: runs
    `global_step(batch)` (cross-replica context; returns the `_per_image_sums` summed over
    replicas) `num_steps` times in one tf.function call, summing over steps, and
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
            # Read afresh before every step: another thread sets it (preemption.py). On the
            # flag's device (the host CPU): the While kernel needs its predicate on the
            # host (WhileOp -> CondResultToBool in tensorflow/core/kernels/functional_ops.cc;
            # lowered, LoopCond keeps its input in host memory), so a condition computed on
            # a GPU would cost a device-to-host copy per step. `i` and `num_steps` are
            # int32, which TF keeps in host memory anyway.
            with tf.device(stop.device):
                return tf.logical_and(i < num_steps, tf.logical_not(stop.read_value()))

        def body(i, totals):  # totals: float32 [5]
            return i + 1, totals + global_step(tuple(next(iterator)))

        zeros = tf.zeros([len(METRIC_KEYS)], tf.float32)
        return tf.while_loop(more, body, (tf.constant(0), zeros))[1]

    def call(iterator, num_steps: int) -> dict:
        with xla.compile_errors_named():  # an op XLA cannot compile fails the first call
            totals = run_steps(iterator, tf.constant(num_steps, tf.int32)).numpy()  # [5], one fetch
        return dict(zip(METRIC_KEYS, totals.tolist()))

    call.function = run_steps  # the tf.function itself, to inspect its graph (tests)
    return call


def _summed(strategy: tf.distribute.Strategy, replica_step):
    """The global step that runs `replica_step` on every replica and sums its [5] sums."""

    def global_step(batch):
        out = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)

    return global_step


def make_train_steps(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    global_batch_size: int,
    loss_fn: LossFn,
    stop: tf.Variable | None = None,
    jit_compile: bool = False,
    average: weight_average.WeightAverage | None = None,
):
    """Returns `train_steps(iterator, num_steps: int) -> {METRIC_KEYS: sum}` (one tf.function call).

    `loss_fn(masks, probs) -> float32 [b]` is the per-image loss (`losses.training_loss`).
    The iterator is a distributed iterator of (images [b,S,S,3], masks [b,S,S,1]). With
    `stop`, a call ends early once it is True; it then ran count / global_batch_size steps.
    A `keras.optimizers.LossScaleOptimizer` is driven by `_loss_scaled_step` (why: there).
    With `jit_compile`, each replica's forward and backward pass is compiled by XLA (module
    doc); the update stays outside. With `average`, every step ends by moving the weights'
    moving average (weight_average.py).
    """
    variables = model.trainable_variables
    gradients = (_compiled_gradients if jit_compile else _gradients)(model, loss_fn, global_batch_size)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        global_step = _loss_scaled_step(strategy, optimizer, variables, gradients)
    else:

        def replica_step(images, masks):
            grads, sums = gradients(images, masks)
            optimizer.apply_gradients(zip(grads, variables))  # all-reduces the gradients (SUM)
            return sums

        global_step = _summed(strategy, replica_step)
    return _run_steps(strategy, weight_average.averaged(strategy, global_step, average), stop)


def _gradients(model: keras.Model, loss_fn: LossFn, global_batch_size: int):
    """`gradients(images, masks, scale=None)` -> (gradients of the mean loss [times
    `scale`], one per trainable variable; float32 [5] metric sums), in replica context."""
    variables = model.trainable_variables

    def gradients(images, masks, scale=None):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)  # float32 [b,S,S,1], even under mixed precision
            per_image = loss_fn(masks, probs)  # float32 [b]
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
            if scale is not None:
                loss *= scale
        grads = tape.gradient(loss, variables)
        return grads, _per_image_sums(masks, tf.stop_gradient(probs), per_image)

    return gradients


def _compiled_gradients(model: keras.Model, loss_fn: LossFn, global_batch_size: int):
    """`_gradients`, its forward and backward pass and sums one XLA cluster per replica.

    The cluster is a pure function of tensors: Keras' `stateless_call` runs the model on
    the variables' VALUES, read in replica context and passed in, and returns the new
    batch-norm statistics, assigned afterwards. A cluster that captured the variables
    themselves would be traced once and read one replica's copies from every replica
    (TensorFlow then fails: "Trying to access resource .../replica_1 ... from device CPU:0").
    """
    trainable, non_trainable = model.trainable_variables, model.non_trainable_variables

    @tf.function(jit_compile=True, autograph=False)
    def cluster(trainable_values, non_trainable_values, images, masks, scale):
        with tf.GradientTape() as tape:
            tape.watch(trainable_values)
            probs, new_values = model.stateless_call(
                trainable_values, non_trainable_values, images, training=True
            )
            per_image = loss_fn(masks, probs)  # float32 [b]
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
            if scale is not None:
                loss *= scale
        grads = tape.gradient(loss, trainable_values)
        return grads, new_values, _per_image_sums(masks, tf.stop_gradient(probs), per_image)

    def gradients(images, masks, scale=None):
        values = [tf.convert_to_tensor(v.value) for v in trainable]  # this replica's copies
        grads, new_values, sums = cluster(values, [v.value for v in non_trainable], images, masks, scale)
        for variable, value in zip(non_trainable, new_values, strict=True):
            variable.assign(value)  # batch-norm moving statistics, as model(...) assigns them
        return grads, sums

    return gradients


def _loss_scaled_step(strategy, optimizer, variables, gradients):
    """The global step under dynamic loss scaling: one finite/non-finite decision for the
    whole global batch, taken identically by every replica of every worker.

    Keras' own `LossScaleOptimizer.apply` cannot be used under tf.distribute: under
    MirroredStrategy it takes the "gradients are finite" flag from the FIRST replica's
    local, not yet all-reduced gradients (keras/src/optimizers/loss_scale_optimizer.py:
    273-278, "since grads is all-reduced"; Keras 3 all-reduces them only later, in
    keras/src/backend/tensorflow/optimizer.py:119), so an overflow on another replica is
    applied and makes the weights non-finite; under MultiWorkerMirroredStrategy each worker
    decides from its own gradients (loss_scale_optimizer.py:263-264, `_common_apply`) and
    workers that disagree enter different collectives (a hang or a timeout).

    So this step keeps Keras' optimizer as the holder of the state (its `dynamic_scale`
    and `step_counter` variables and the inner optimizer: checkpoints stay as they were)
    but decides itself: every replica counts its non-finite gradient entries, the counts
    are summed over all replicas and workers together with the metric sums (one
    `strategy.reduce`, which every worker receives), and a `tf.cond` in cross-replica
    context either applies the unscaled gradients on every replica (the inner optimizer
    all-reduces them) or skips the step everywhere. The scale then halves once (skip) or
    doubles after `dynamic_growth_steps` applied steps in a row, as in Keras.
    """
    inner = optimizer.inner_optimizer
    scale_var, counter = optimizer.dynamic_scale, optimizer.step_counter

    def replica_grads(images, masks):
        scale = tf.convert_to_tensor(scale_var)  # float32 [], this replica's copy
        grads, sums = gradients(images, masks, scale)
        nonfinite = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in grads])
        return grads, scale, tf.concat([sums, nonfinite[None]], axis=0)  # [5 + 1]

    def replica_apply(grads, scale):
        inner.apply_gradients(zip([g / scale for g in grads], variables))

    def global_step(batch):
        grads, scale, stats = strategy.run(replica_grads, args=batch)
        stats = strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)  # same everywhere
        current, good = tf.convert_to_tensor(scale_var), tf.convert_to_tensor(counter)

        def apply():
            strategy.run(replica_apply, args=(grads, scale))
            grow = tf.equal(good, optimizer.dynamic_growth_steps - 1)
            return tf.where(grow, current * 2.0, current), tf.where(grow, tf.zeros_like(good), good + 1)

        def skip():
            return current * 0.5, tf.zeros_like(good)

        # Cross-replica context: MirroredStrategy cannot run a cond in replica context
        # whose branch all-reduces (merge_call); every worker takes the same branch.
        new_scale, new_good = tf.cond(tf.equal(stats[-1], 0.0), apply, skip)
        with tf.control_dependencies([scale_var.assign(new_scale), counter.assign(new_good)]):
            return tf.identity(stats[:-1])

    return global_step


def make_eval_steps(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    loss_fn: LossFn,
    stop: tf.Variable | None = None,
    jit_compile: bool = False,
):
    """Returns `eval_steps(iterator, num_steps: int) -> {METRIC_KEYS: sum}` (one tf.function call).

    The iterator yields (images, masks, weights [b]); padding examples have weight 0, so
    the sums cover every real example exactly once. With `stop`, a call ends early once it
    is True, as training calls do (the sums are then partial and of no use). With
    `jit_compile`, each replica's forward pass and sums are compiled by XLA.
    """

    def sums(images, masks, weights, probs):
        return _per_image_sums(masks, probs, loss_fn(masks, probs), weights)

    @tf.function(jit_compile=True, autograph=False)
    def cluster(trainable_values, non_trainable_values, images, masks, weights):
        probs, _ = model.stateless_call(trainable_values, non_trainable_values, images, training=False)
        return sums(images, masks, weights, probs)

    def replica_step(images, masks, weights):
        if not jit_compile:
            return sums(images, masks, weights, model(images, training=False))
        values = [[v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables)]
        return cluster(*values, images, masks, weights)  # as in _compiled_gradients

    return _run_steps(strategy, _summed(strategy, replica_step), stop)


def means(totals: dict) -> dict:
    """Turns metric sums into per-image means."""
    count = max(totals["count"], 1.0)
    return {k: totals[k] / count for k in METRIC_KEYS if k != "count"}


class StepsPerCall:
    """Decides how many training steps each `train_steps` call runs, and where checkpoints
    land (pure host logic).

    A call never crosses the end of an epoch or a checkpoint step, so checkpoints land on
    exactly those steps. With `steps_per_execution` 0 and `auto` (one process), the chunk
    starts at 1 and doubles after each full-size call faster than AUTO_CHUNK_SECONDS, up to
    MAX_AUTO_CHUNK: the fixed host work of a call (function call, metric fetch, TensorBoard
    scalar) then stays small beside the steps on fast devices, while progress still
    updates often on slow ones. Several workers must run the same steps per call and their
    timings differ, so their chunk never grows.

    Checkpoints: every `checkpoint_every_steps` steps when > 0; otherwise about every
    `checkpoint_every_seconds` of training time (0: epoch ends only). Every worker must
    save at the same step, and their clocks differ, so time is turned into a step: at a
    plan point (CADENCE_PROBE_STEPS after the start, then every checkpoint and epoch end,
    all steps every worker knows), the trainer agrees on the seconds per step the workers
    measured since the last one (`pace()`; one all-reduce) and passes it to `plan`, which
    puts the next checkpoint that many seconds of training away. Calls are timed without
    the first one (it traces the function). Where a checkpoint lands does not change the
    training: a resumed run is bit-identical from any step (trainer.py).
    """

    def __init__(
        self,
        steps_per_epoch: int,
        checkpoint_every_steps: int,
        steps_per_execution: int,
        auto: bool,
        stops: tuple[int, ...] = (),
        checkpoint_every_seconds: float = 0.0,
        first_step: int = 0,
    ):
        self._steps_per_epoch = steps_per_epoch
        self._every = checkpoint_every_steps
        self.chunk = steps_per_execution or 1
        self._grow = not steps_per_execution and auto
        self._stops = tuple(sorted(stops))  # extra boundaries, e.g. a profiled range
        self._every_seconds = 0.0 if checkpoint_every_steps else checkpoint_every_seconds
        # Time cadence: the next plan point and the next checkpoint (None: not planned).
        self._plan_at = first_step + CADENCE_PROBE_STEPS if self._every_seconds else None
        self._save_at = None
        self._timed_steps, self._timed_seconds, self._calls = 0, 0.0, 0

    def next(self, step: int) -> int:
        """Steps of the call that starts after global step `step`."""
        boundary = (step // self._steps_per_epoch + 1) * self._steps_per_epoch
        if self._every:
            boundary = min(boundary, (step // self._every + 1) * self._every)
        planned = self._stops + (self._plan_at, self._save_at)
        boundary = min([boundary] + [s for s in planned if s is not None and s > step])
        return min(self.chunk, boundary - step)

    def record(self, num_steps: int, seconds: float) -> None:
        """Reports how long a call of `num_steps` took; may grow the chunk."""
        self._calls += 1
        if self._calls > 1:  # the first call traces the function: not the pace
            self._timed_steps += num_steps
            self._timed_seconds += seconds
        if self._grow and num_steps == self.chunk and seconds < AUTO_CHUNK_SECONDS:
            self.chunk = min(2 * self.chunk, MAX_AUTO_CHUNK)

    def checkpoint_due(self, step: int) -> bool:
        """A mid-epoch checkpoint step (epoch ends are checkpointed anyway)."""
        if step % self._steps_per_epoch == 0:
            return False
        return (step % self._every == 0) if self._every else step == self._save_at

    def plan_due(self, step: int) -> bool:
        """Whether the trainer must agree on the pace and call `plan` after `step`."""
        return bool(self._every_seconds) and (
            step in (self._plan_at, self._save_at) or step % self._steps_per_epoch == 0
        )

    def pace(self) -> float:
        """This process's seconds per step since the last plan (0: nothing timed yet)."""
        return self._timed_seconds / self._timed_steps if self._timed_steps else 0.0

    def plan(self, step: int, seconds_per_step: float) -> None:
        """Puts the next time-cadence checkpoint `checkpoint_every_seconds` of training
        after `step` at `seconds_per_step` (every worker's agreed pace; 0: probe again)."""
        if seconds_per_step > 0:
            self._save_at = step + max(1, int(self._every_seconds / seconds_per_step))
            self._plan_at = None
        else:
            self._save_at, self._plan_at = None, step + CADENCE_PROBE_STEPS
        self._timed_steps, self._timed_seconds = 0, 0.0
