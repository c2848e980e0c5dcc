"""The training run, as one plain function: `train(data_dir, model_dir, config)`.

`train` reads top to bottom: the stall watchdog (core/watchdog.py) and the process settings
(devices, determinism, seeds) -> strategy -> the workers' agreement on their settings and
one precision for the group (agreement.py) -> set up (run_setup.py: records, the run's
identity, model and optimizer inside `strategy.scope()`, restore, config dump) -> per
epoch: train, then end the epoch (validate, record, checkpoint, keep the best) -> export.
Every phase tells the watchdog what it is about to do. What only the chief writes goes
through one reporter (report.py) that does nothing on the other workers.

Faults (docs/scaling.md): the chief holds an exclusive lock on `model_dir` for the whole
run (a second run is refused, naming the holder); the records are verified against their
manifest before training (--verify_records); SIGTERM or SIGINT finishes the step in
flight, checkpoints it and raises preemption.Stopped (exit status 143 or 130); a shard
that fails while reading, or an output that cannot be written, stops with a UserError
naming the file, and the last checkpoint stays.

Resume contract: the data order is a pure function of (seed, epoch), and the checkpoint
holds the global step, so a restarted run rebuilds the epoch's dataset, skips the batches
already consumed and continues with the very batches the uninterrupted run would have
seen. With `deterministic=True` the final weights are bit-identical.
"""

import contextlib
import functools
import hashlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from core import locks
from core import watchdog
from core.errors import UserError
from launch.layout import LOCK_FILE  # names the holder while a run trains (core/locks.py)
from launch.training import agreement
from launch.training import distribute
from launch.training import history
from launch.training import injected_faults
from launch.training import preemption
from launch.training import report
from launch.training import run_setup
from launch.training import steps as steps_lib
from launch.training.config import TrainConfig
from pipeline import dataset as dataset_lib


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged; the last good checkpoint is kept."""


def train(data_dir: str, model_dir: str, config: TrainConfig, *, verbose: bool = True) -> dict:
    """Trains the U-Net on `data_dir`'s records; checkpoints, logs and exports into `model_dir`.

    Running it again on the same `model_dir` resumes from its newest checkpoint.

    Args:
      data_dir: records from isic-preprocess.
      model_dir: the run's directory (see README for what lands there).
      config: the options (`isic-train --help`); written to `model_dir/config.json`.
      verbose: print the model summary, progress bars and per-epoch lines (chief only).
    Returns:
      The last epoch's history row (epoch, step, training and validation means, learning
      rate, images/s, seconds) plus "weights_sha256" and "chief". When `model_dir` has
      already trained `config.epochs` epochs, the row is the last one of its history.csv
      (on the chief; other workers then return only the two extra keys).
    """
    with watchdog.for_training(config.stall_minutes) as dog, distribute.process_settings(config):
        # A multi-worker strategy waits here until every task of the cluster has started.
        dog.progress("set-up", doing=f"joining the cluster ({', '.join(dog.peers)})" if dog.peers else "")
        strategy = distribute.make_strategy(config.strategy, config.collective_timeout)
        dog.progress("set-up", doing="agreeing on the settings with every worker")
        precision, why = agreement.agree_at_start(strategy, config, data_dir, dog.peers)
        distribute.set_precision(precision, why)
        chief = distribute.is_chief(strategy)
        with (
            _exclusive(model_dir, chief),
            preemption.stopper(strategy, distribute.num_workers(strategy)) as stop,
        ):
            reporter = report.create(model_dir, chief=chief, verbose=verbose)
            run = run_setup.set_up(data_dir, model_dir, config, strategy, precision, reporter, stop, dog)
            stop.attach(run.checkpoint, save=functools.partial(_save, run), step=lambda: run.step)
            with _reading(run), _peers_lost(run):
                _end_interrupted_epoch(run, model_dir)
                for epoch in range(run.step // run.steps_per_epoch, config.epochs):
                    sums, seconds = _train_epoch(run, epoch)
                    run.row = _end_epoch(run, epoch, sums, seconds)
                    run.stop.between_epochs()  # a signal during validation: stop here
            return _export(run)


def _exclusive(model_dir: str, chief: bool):
    """The chief's exclusive lock on `model_dir` (other workers write nothing there)."""
    if not chief:
        return contextlib.nullcontext()
    return locks.exclusive(
        model_dir,
        LOCK_FILE,
        "isic-train",
        advice="wait for it to finish (or stop it), or use another --model_dir",
    )


def _train_epoch(run: run_setup.Run, epoch: int) -> tuple[dict, float]:
    """Trains the rest of `epoch` (0-based), chunk by chunk; returns (metric sums, seconds)."""
    first_step = epoch * run.steps_per_epoch
    skip = run.step - first_step  # global steps of this epoch already trained
    iterator = iter(
        distribute.distribute_datasets(run.strategy, functools.partial(_train_input, run, epoch, skip))
    )
    run.reporter.epoch_start(epoch, skip)
    sums = dict.fromkeys(steps_lib.METRIC_KEYS, 0.0)
    start = time.perf_counter()
    while run.step < first_step + run.steps_per_epoch:
        n = run.planner.next(run.step)
        run.reporter.before_call(run.step)
        run.watchdog.progress("training", run.step, f"a training call of {n} steps")
        call_start = time.perf_counter()
        totals = run.train_steps(iterator, n)
        # Fewer than n steps when a stop signal ended the call early (preemption.py).
        done = round(totals["count"]) // run.config.batch_size
        run.planner.record(done, time.perf_counter() - call_start)
        run.step += done
        if done:
            _check_finite(totals, run.step, run.saver.last)
            sums = {k: sums[k] + totals[k] for k in sums}
            images_per_s = sums["count"] / max(time.perf_counter() - start, 1e-9)
            run.reporter.chunk(run.step, run.step - first_step, totals, images_per_s)
        if run.planner.checkpoint_due(run.step):
            _save(run)
        if run.planner.plan_due(run.step):  # time cadence: every worker, the same step
            run.watchdog.progress("training", run.step, "agreeing on the checkpoint pace (an all-reduce)")
            pace = distribute.mean_over_workers(run.strategy, run.planner.pace())
            run.planner.plan(run.step, pace)
        injected_faults.after_call(run.strategy, run.step, run.watchdog)  # tests only
        run.stop.after_chunk()  # after SIGTERM/SIGINT: checkpoint, raise Stopped
    return sums, time.perf_counter() - start


def _train_input(run: run_setup.Run, epoch: int, skip: int, ctx: tf.distribute.InputContext):
    """This input pipeline's part of `epoch`, from its `skip`-th global step on."""
    per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines  # batches per step
    dataset = dataset_lib.make_dataset(
        run.records,
        "train",
        batch_size=run.config.batch_size,
        training=True,
        seed=run.config.seed,
        epoch=epoch,
        skip_batches=skip * per_pipeline,
        augment=run.config,
        input_context=ctx,
    )
    first_step = epoch * run.steps_per_epoch + skip
    return injected_faults.corrupt_batches(dataset, ctx.input_pipeline_id, first_step, per_pipeline)


def _check_finite(totals: dict, step: int, last_checkpoint: str | None) -> None:
    if not np.isfinite(totals["loss"]):
        raise NonFiniteLossError(
            f"the training loss became {totals['loss']} at step {step}. The last good checkpoint "
            f"({last_checkpoint or 'none yet'}) is kept. Lower --learning_rate, or use "
            "--precision float32 if this happened under mixed precision."
        )


def _end_epoch(run: run_setup.Run, epoch: int, sums: dict, seconds: float) -> dict:
    """Validates, checkpoints, and hands the epoch's history row to the reporter."""
    train_means = steps_lib.means(sums) if sums["count"] else {}
    val_means = _validate(run)
    row = {
        "epoch": epoch + 1,
        "step": run.step,
        **train_means,
        **{"val_" + k: v for k, v in val_means.items()},
        "learning_rate": float(run.optimizer.learning_rate.numpy()),
        "images_per_s": sums["count"] / max(seconds, 1e-9),
        "seconds": seconds,
    }
    _save(run)
    run.watchdog.progress("save", run.step, "writing the epoch's history, plots, logs and best model")
    run.reporter.epoch_end(row, run.scored_model, run.records)  # history, plots, logs, best model
    return row


def _validate(run: run_setup.Run) -> dict:
    """Means over the whole validation split ({} without one).

    Runs in calls of at most one training call's steps, and asks the stopper after each
    (all workers agree): a stop signal during validation then checkpoints the epoch's last
    step and stops within one call, and the resumed run validates that epoch again
    (_end_interrupted_epoch). One process: a call also ends after the step in flight.
    """
    val_steps = -(-run.records.size("val") // run.config.batch_size)  # padded global batches
    if not val_steps:
        return {}

    def val_input(ctx):
        return dataset_lib.make_dataset(
            run.records, "val", batch_size=run.config.batch_size, training=False, input_context=ctx
        )

    logging.info("validating at step %d (%d batches)", run.step, val_steps)
    iterator = iter(distribute.distribute_datasets(run.strategy, val_input))
    # One process: one call, which the stop flag ends early; several workers: calls as long
    # as a training call (an eval step costs less than a train step), one agreement each.
    chunk = val_steps if run.stop.flag is not None else max(run.planner.chunk, 1)
    sums = dict.fromkeys(steps_lib.METRIC_KEYS, 0.0)
    for first in range(0, val_steps, chunk):
        last = min(first + chunk, val_steps)
        run.watchdog.progress("validation", run.step, f"validation steps {first + 1}-{last} of {val_steps}")
        totals = run.eval_steps(iterator, last - first)
        injected_faults.after_call(run.strategy, run.step, run.watchdog)  # tests only
        sums = {k: sums[k] + totals[k] for k in sums}
        if run.stop.requested():
            logging.info(
                "stop signal during validation: checkpointing step %d, the end of the "
                "epoch; the resumed run validates this epoch again",
                run.step,
            )
            run.stop.stop_now()
    return steps_lib.means(sums)


def _end_interrupted_epoch(run: run_setup.Run, model_dir: str) -> None:
    """Validates and records the epoch that ended at the restored step when history.csv
    has no row for it (a stop during its validation, or a kill between its checkpoint and
    its row); its training means are then unknown and left empty. Every worker reads the
    chief's history.csv, so all agree (validation runs collectives)."""
    epoch = run.step // run.steps_per_epoch
    if not run.step or run.step % run.steps_per_epoch or epoch > run.config.epochs:
        return
    if any(r["epoch"] == epoch for r in history.read_history(model_dir, up_to_epoch=epoch)):
        return
    logging.info("epoch %d ended at step %d without its history row: validating it again", epoch, run.step)
    run.row = _end_epoch(run, epoch - 1, dict.fromkeys(steps_lib.METRIC_KEYS, 0.0), 0.0)
    run.stop.between_epochs()


def _save(run: run_setup.Run) -> str | None:
    """Checkpoints the current step unless its checkpoint exists (on every worker: saving
    may run collectives); returns the newest checkpoint (None: nothing trained yet)."""
    if run.saver.last_step != run.step and (run.step or run.saver.last):
        run.watchdog.progress("save", run.step, "writing the checkpoint")
        run.step_var.assign(run.step)
        run.saver.save(run.step)
    return run.saver.last


@contextlib.contextmanager
def _reading(run: run_setup.Run):
    """dataset.reading, plus where the run stopped and which checkpoint is kept."""
    try:
        with dataset_lib.reading(run.records):
            yield
    except dataset_lib.RecordsError as e:
        raise dataset_lib.RecordsError(
            f"{e}\nTraining stopped at step {run.step}; the last checkpoint "
            f"({run.saver.last or 'none yet'}) is kept, and after the rebuild the same command "
            "resumes from it."
        ) from None


@contextlib.contextmanager
def _peers_lost(run: run_setup.Run):
    """A peer that stopped heartbeating or died aborts this worker's collectives: one line
    and exit status 142 (watchdog.RestartGroup) instead of TensorFlow's traceback and 1,
    which Kubeflow's ExitCode policy would not restart."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.InternalError, tf.errors.AbortedError) as e:
        message = e.message or ""
        if distribute.num_workers(run.strategy) == 1 or not (
            isinstance(e, tf.errors.UnavailableError) or "Collective ops is aborted" in message
        ):
            raise
        cause = next((line.strip() for line in message.splitlines() if "aborted by" in line), "")
        raise watchdog.RestartGroup(
            f"a peer worker is gone at step {run.step} ({type(e).__name__}: "
            f"{cause or message.strip().splitlines()[0]}); exiting with status "
            f"{watchdog.STALL_EXIT_STATUS} so the group restarts from the last checkpoint "
            f"({run.saver.last or 'none yet'})"
        ) from None


def _export(run: run_setup.Run) -> dict:
    """The final models (chief) and the result row, with a digest every worker computes."""
    run.watchdog.progress("export", run.step, "writing the final models")
    row = dict(run.row, weights_sha256=weights_digest(run.model))
    logging.info("final weights sha256 %s", row["weights_sha256"])
    if isinstance(run.optimizer, keras.optimizers.LossScaleOptimizer):  # equal on every worker
        skipped = run.step - int(run.optimizer.iterations.numpy())
        logging.info("loss scale %g; %d step(s) skipped", float(run.optimizer.dynamic_scale.numpy()), skipped)
    run.reporter.finish(run.scored_model)
    row["chief"] = run.reporter.chief
    return row


def weights_digest(model: keras.Model) -> str:
    """sha256 of the trainable weights: equal on every worker of a healthy data-parallel run.

    Batch-norm moving statistics are left out: each replica keeps its own unless
    --sync_batch_norm, and the chief's are the ones exported.
    """
    digest = hashlib.sha256()
    for w in model.trainable_weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()
