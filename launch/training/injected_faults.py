"""Faults made on purpose, so the tests can prove each one is caught (test-only).

Set ISIC_INJECT_FAULT in a worker's environment to one or more of (";"-separated):

  stall_collective:worker=W:step=S[:once=PATH]
      after the training or validation call that ends at global step >= S, worker W enters an
      all-reduce its peers never enter: the group waits forever unless the stall watchdog
      (watchdog.py) ends it. With `once`, only the first run that creates PATH does.
  overflow:worker=W:replica=R:step=S
      the masks of replica R of worker W at global step S are multiplied by 1e6: under
      mixed_float16 the scaled loss overflows on that one replica only, which must skip
      the step on every replica of every worker (steps._loss_scaled_step). Deterministic,
      so a resumed run sees the same fault at the same step.

Nothing happens without the variable; it is read once per call, not at import.
"""

import dataclasses
import os

import tensorflow as tf
from absl import logging

from launch.training import distribute

VARIABLE = "ISIC_INJECT_FAULT"
STRAY_GROUP = 1 << 30  # the keys of the stall_collective fault's all-reduce
OVERFLOW_FACTOR = 1e6  # masks in [0, 1] times this: the per-image loss leaves float16's range


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    worker: int
    step: int
    replica: int = 0
    once: str = ""


def from_env(kind: str, env=os.environ) -> Fault | None:
    """The fault of `kind` that ISIC_INJECT_FAULT describes, or None."""
    for text in env.get(VARIABLE, "").split(";"):
        name, *items = text.split(":")
        if name == kind:
            fields = dict(item.split("=", 1) for item in items)
            ints = {k: int(v) for k, v in fields.items() if k in ("worker", "step", "replica")}
            return Fault(kind, once=fields.get("once", ""), **ints)
    return None


def _claim(path: str) -> bool:
    """True the first time any process claims `path` (creates it), False afterwards."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def after_call(strategy: tf.distribute.Strategy, step: int, dog) -> None:
    """The stall_collective fault, after a training or validation call at global `step`."""
    fault = from_env("stall_collective")
    if fault is None or step < fault.step:
        return
    if distribute.task_index(strategy) != fault.worker or (fault.once and not _claim(fault.once)):
        return
    dog.progress("fault", step, "an all-reduce its peers never enter (injected fault)")
    logging.warning("injected fault: an all-reduce its peers never enter, at step %d", step)
    # Group and instance keys no other collective of the run uses (TensorFlow counts its own
    # from 1): the op waits for a peer to join group STRAY_GROUP, which none ever does. A
    # reused key would not hang but fail on a type mismatch with the peer's collective.
    with tf.device(strategy.extended.worker_devices[0]):
        tf.raw_ops.CollectiveReduceV2(
            input=tf.zeros([1]),
            group_size=distribute.num_workers(strategy),
            group_key=STRAY_GROUP,
            instance_key=STRAY_GROUP,
            ordering_token=[],
            merge_op="Add",
            final_op="Id",
        )


def corrupt_batches(dataset: tf.data.Dataset, pipeline: int, first_step: int, per_pipeline: int):
    """The overflow fault on an input pipeline's batches; `dataset` itself without it.

    Batch b of the pipeline belongs to global step first_step + b // per_pipeline and goes
    to its local replica b % per_pipeline (distribute_datasets_from_function)."""
    fault = from_env("overflow")
    if fault is None or pipeline != fault.worker:
        return dataset
    target = (fault.step - first_step) * per_pipeline + fault.replica  # the batch to corrupt

    def corrupt(index, batch):
        images, masks = batch  # [b,S,S,3], [b,S,S,1]
        factor = tf.where(tf.equal(index, target), OVERFLOW_FACTOR, 1.0)
        return images, masks * tf.cast(factor, masks.dtype)

    return dataset.enumerate().map(corrupt)
