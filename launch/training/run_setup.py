"""The set-up of one training run: records, identity, model and optimizer, restore.

`set_up` returns the `Run` that the trainer's phases share (launch/training/trainer.py):
the records verified against their manifest, the model and optimizer built inside the
strategy's scope, the newest intact checkpoint restored (or a warm start), the step
functions, and the workers' agreement on the restored step (agreement.py).
"""

import dataclasses
from typing import Callable

import keras
import tensorflow as tf
from absl import logging

from core import watchdog
from core.errors import UserError
from launch.training import agreement
from launch.training import build
from launch.training import checkpoints
from launch.training import distribute
from launch.training import preemption
from launch.training import report
from launch.training import run_identity
from launch.training import steps as steps_lib
from launch.training.config import TrainConfig
from pipeline import dataset as dataset_lib


@dataclasses.dataclass
class Run:
    """What the phases of one run share; `step` and `row` advance as it trains."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    records: dataset_lib.Records
    steps_per_epoch: int
    model: keras.Model  # the trained weights
    scored_model: keras.Model  # what validation scores and the run saves: --ema_decay's average or `model`
    optimizer: keras.optimizers.Optimizer
    step_var: tf.Variable  # the checkpointed copy of `step`, assigned before each save
    saver: checkpoints.Saver
    reporter: report.SilentReporter
    stop: preemption.LocalStop | preemption.ClusterStop
    watchdog: watchdog.Watchdog  # told of every unit of progress (set-up, calls, saves)
    planner: steps_lib.StepsPerCall
    train_steps: Callable
    eval_steps: Callable
    step: int
    row: dict
    checkpoint: tf.train.Checkpoint  # model, optimizer, step_var (and the average)


def set_up(data_dir, model_dir, config, strategy, precision, reporter, stop, dog) -> Run:
    """Records, the run's identity, model and optimizer, restore, and the config dump."""
    dog.progress("set-up", doing=f"verifying the records ({config.verify_records})")
    records = _verified_records(data_dir, config.verify_records)
    _check_fits(config, records.image_size, strategy.num_replicas_in_sync)
    # Every input pipeline yields exactly this many steps' worth of batches (see pipeline/).
    steps_per_epoch = records.steps_per_epoch("train", config.batch_size)
    identity = run_identity.run_identity(
        config, records.image_size, steps_per_epoch, records.preprocessing, precision
    )
    if config.restart and reporter.chief:  # other workers then find nothing to restore
        checkpoints.set_aside_previous_run(model_dir)
    if not config.restart:
        run_identity.check_run(model_dir, identity)  # before anything is written
    dog.progress("set-up", doing="building the model and restoring the newest checkpoint")
    model, optimizer = build.model_and_optimizer(
        strategy, config, records.image_size, steps_per_epoch, precision
    )
    average = build.average_for(strategy, config, model, records.image_size)
    step_var, checkpoint = _checkpoint(model, optimizer, average)
    restored = _restore(checkpoint, model, model_dir, config, reporter.chief)
    step = int(step_var.numpy())
    dog.progress("set-up", step, "agreeing on the restored step with every worker")
    agreement.agree_on_resume(strategy, step, restored, dog.peers)
    reporter.start(config, identity, model, start_epoch=step // steps_per_epoch)
    _log_start(model_dir, config, restored, step, steps_per_epoch, precision)
    steps = build.make_steps(strategy, model, optimizer, config, stop=stop.flag, average=average)
    return Run(
        config,
        strategy,
        records,
        steps_per_epoch,
        model,
        average.model if average else model,
        optimizer,
        step_var,
        saver=checkpoints.Saver(checkpoint, model_dir, chief=reporter.chief, last=restored, run=identity),
        reporter=reporter,
        stop=stop,
        watchdog=dog,
        planner=steps_lib.StepsPerCall(
            steps_per_epoch,
            config.checkpoint_every_steps,
            config.steps_per_execution,
            auto=distribute.num_workers(strategy) == 1,
            stops=config.profile_range or (),
            checkpoint_every_seconds=60 * config.checkpoint_every_minutes,
            first_step=step,
        ),
        train_steps=steps.train,
        eval_steps=steps.eval,
        step=step,
        row=reporter.last_row(),
        checkpoint=checkpoint,
    )


def _check_fits(config: TrainConfig, image_size: int, replicas: int) -> None:
    """UserError unless the global batch divides over the replicas and the U-Net's levels
    can halve the records' images."""
    if config.batch_size % replicas:
        raise UserError(
            f"--batch_size {config.batch_size} does not divide over {replicas} replicas; use a multiple of it"
        )
    if config.encoder == "unet" and image_size % 2**config.depth:
        raise UserError(
            f"--depth {config.depth} halves the image {config.depth} times, so it must be a "
            f"multiple of {2**config.depth}; these records are {image_size}x{image_size}. Use a "
            "smaller --depth, or records built with another --image_size."
        )


def _checkpoint(model, optimizer, average) -> tuple[tf.Variable, tf.train.Checkpoint]:
    """(the global step's variable, the checkpoint of the model, optimizer, step and
    --ema_decay's average)."""
    # The global step lives outside the scope: it is only read and written by the host.
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    if average:
        checkpoint.average = average.checkpointed  # the averaged weights and their count
    return step_var, checkpoint


def _log_start(model_dir, config, restored, step: int, steps_per_epoch: int, precision: str) -> None:
    """Says where the run starts (or that it has nothing left to train)."""
    logging.info(
        "%s at step %d (epoch %d of %d, %d steps per epoch, global batch %d, %s)",
        "resuming" if restored else "starting",
        step,
        step // steps_per_epoch + 1,
        config.epochs,
        steps_per_epoch,
        config.batch_size,
        precision,
    )
    if step // steps_per_epoch >= config.epochs:
        logging.info("%s has already trained %d epochs: nothing left to train", model_dir, config.epochs)


def _verified_records(data_dir: str, level: str) -> dataset_lib.Records:
    """The records, their train and val shards checked against the manifest at `level`."""
    records = dataset_lib.Records.open(data_dir)
    if level != "none":
        done = records.verify(("train", "val"), level)
        logging.info(
            "verified %d shards (%.1f MB, %s) in %.2f s",
            done["shards"],
            done["bytes"] / 1e6,
            level,
            done["seconds"],
        )
    return records


def _restore(checkpoint, model, model_dir: str, config: TrainConfig, chief: bool) -> str | None:
    """Resumes from `model_dir`'s newest intact checkpoint, else warm-starts a new run from
    --warm_start if given; returns the restored checkpoint's path (None: a new run).
    With --restart, non-chief workers restore nothing: the chief is moving the old run aside."""
    warm_start = config.warm_start
    restored = (
        None
        if config.restart and not chief
        else checkpoints.restore_latest(checkpoint, model_dir, chief=chief)
    )
    if restored and warm_start:
        logging.warning(
            "%s already has checkpoints: resuming at step %d, --warm_start %s is not used",
            model_dir,
            int(checkpoint.step.numpy()),
            warm_start,
        )
    elif warm_start:
        checkpoints.warm_start(model, warm_start)
    return restored
