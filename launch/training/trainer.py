"""The training run, as one plain function: `train(data_dir, model_dir, ...)`.

It reads top to bottom: setup (determinism, policy, strategy, output dir, flags) -> data
-> model and optimizer inside `strategy.scope()` -> restore -> loop -> export.

Resume contract: the data order is a pure function of (seed, epoch), and the checkpoint
holds the global step, so a restarted run rebuilds the epoch's dataset, skips the batches
already consumed and continues with the very batches the uninterrupted run would have
seen. With `deterministic=True` the final weights are bit-identical.
"""

import hashlib
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from launch.training import checkpoints
from launch.training import distribute
from launch.training import history
from launch.training import steps as steps_lib
from launch.training import summaries
from model import unet
from pipeline import augment as augment_lib
from pipeline import dataset as dataset_lib
from preprocessing import manifest as manifest_lib

FINAL_MODEL = "ISIC-UNet.keras"
# steps_per_execution=0 (auto): the chunk doubles while a call is faster than this, so the
# per-call host work (~3-6 ms: function call, metric fetch, TensorBoard scalar) stays a few
# percent of the step time on fast devices, and progress still updates on slow ones.
AUTO_CHUNK_SECONDS = 0.2
MAX_AUTO_CHUNK = 256
SAVED_MODEL_DIR = "saved_model"


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the last good checkpoint is kept."""


def _learning_rate(base: float, schedule: str, total_steps: int, warmup_steps: int):
    """A constant rate, or cosine decay to 0 over the run after a linear warmup."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else base,
            decay_steps=max(total_steps - warmup_steps, 1),
            warmup_target=base if warmup_steps else None, warmup_steps=warmup_steps)
    raise ValueError(f"--lr_schedule must be 'constant' or 'cosine', got {schedule!r}")


def _make_optimizer(learning_rate, weight_decay: float, precision: str):
    inner = (keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay) if weight_decay
             else keras.optimizers.Adam(learning_rate))
    # float16 needs loss scaling; bfloat16 has float32's exponent range and does not.
    return keras.optimizers.LossScaleOptimizer(inner) if precision == "mixed_float16" else inner


def _distributed(strategy, fn):
    """Distributes the per-input-pipeline dataset `fn(input_context)` over the replicas.

    One CPU replica gets the plain dataset: there is nothing to split or copy to a device,
    and the distributed iterator's machinery costs 0.2-0.4 ms per step (loop probe on 2
    cores: 0.89 ms against 0.67 ms per step with a tiny model; isic-bench stage 3).
    """
    if (isinstance(strategy, tf.distribute.OneDeviceStrategy)
            and "CPU" in strategy.extended.worker_devices[0].upper()):
        return fn(tf.distribute.InputContext())
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(fn, options)


def _check_finite(values: dict, step: int, last_checkpoint: str | None) -> None:
    if not np.isfinite(values["loss"]):
        raise NonFiniteLossError(
            f"the training loss became {values['loss']} at step {step}. The last good checkpoint "
            f"({last_checkpoint or 'none yet'}) is kept. Lower --learning_rate, or use "
            "--precision float32 if this happened under mixed precision.")


def train(data_dir: str, model_dir: str, *, epochs: int = 20, batch_size: int = 32,
          learning_rate: float = 1e-3, lr_schedule: str = "constant", warmup_epochs: float = 0.0,
          weight_decay: float = 0.0, base_filters: int = 64, sync_batch_norm: bool = False,
          bn_momentum: float = unet.BN_MOMENTUM, dice_weight: float = 1.0,
          augment: bool = True, augment_strength: float = 1.0, precision: str = "auto",
          strategy: str = "auto",
          num_cpu_devices: int = 0, checkpoint_every_steps: int = 100,
          steps_per_execution: int = 0, seed: int = 0, deterministic: bool = False,
          warm_start: str | None = None, collective_timeout_s: float = distribute.DEFAULT_COLLECTIVE_TIMEOUT_S,
          num_summary_images: int = 3, flags_text: str | None = None, verbose: bool = True) -> dict:
    """Trains the U-Net on `data_dir`'s records; checkpoints, logs and exports into `model_dir`.

    Args mirror the `isic-train` flags (see launch/commands/train.py for their help). Returns the
    last epoch's history row (training and validation means), or {} if nothing was left
    to train.
    """
    # --- Setup: determinism, devices, precision, strategy, output directory.
    distribute.split_cpu(num_cpu_devices)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)  # weight init; data randomness is seeded separately
    precision = distribute.resolve_precision(precision)
    previous_policy = distribute.set_precision(precision)
    try:
        strat = distribute.make_strategy(strategy, collective_timeout_s)
        chief = distribute.is_chief(strat)
        if chief:
            os.makedirs(model_dir, exist_ok=True)
            if flags_text is not None:
                with open(os.path.join(model_dir, "flags.txt"), "w") as f:
                    f.write(flags_text)
        return _train(strat, chief, data_dir, model_dir, epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, lr_schedule=lr_schedule,
                      warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                      base_filters=base_filters, sync_batch_norm=sync_batch_norm,
                      bn_momentum=bn_momentum, dice_weight=dice_weight, augment=augment,
                      augment_strength=augment_strength, precision=precision,
                      checkpoint_every_steps=checkpoint_every_steps,
                      steps_per_execution=steps_per_execution, seed=seed, warm_start=warm_start,
                      num_summary_images=num_summary_images, verbose=verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(strat, chief, data_dir, model_dir, *, epochs, batch_size, learning_rate, lr_schedule,
           warmup_epochs, weight_decay, base_filters, sync_batch_norm, bn_momentum, dice_weight, augment,
           augment_strength, precision,
           checkpoint_every_steps, steps_per_execution, seed, warm_start, num_summary_images,
           verbose):
    # --- Data: sizes from the manifest; datasets are built per epoch (order = f(seed, epoch)).
    manifest = manifest_lib.read_manifest(data_dir)
    image_size = manifest["image_size"]
    if batch_size % strat.num_replicas_in_sync:
        raise ValueError(f"--batch_size {batch_size} does not divide over "
                         f"{strat.num_replicas_in_sync} replicas; use a multiple of it")
    # Every input pipeline yields exactly this many steps' worth of batches (see pipeline/).
    steps_per_epoch = dataset_lib.steps_per_epoch(data_dir, "train", batch_size)
    val_count = manifest["counts"].get("val", 0)
    val_steps = -(-val_count // batch_size)  # eval is padded to whole global batches
    total_steps = epochs * steps_per_epoch
    run = {"image_size": image_size, "base_filters": base_filters, "depth": 4,
           "batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "seed": seed}
    checkpoints.check_run(model_dir, run)

    augment_options = augment_lib.scaled_strengths(augment_strength)

    # --- Model and optimizer, created inside the strategy scope so variables are mirrored.
    with strat.scope():
        model = unet.build_unet(image_size=image_size, base_filters=base_filters,
                                sync_batch_norm=sync_batch_norm, bn_momentum=bn_momentum)
        lr = _learning_rate(learning_rate, lr_schedule, total_steps, int(warmup_epochs * steps_per_epoch))
        optimizer = _make_optimizer(lr, weight_decay, precision)
        # Built before the first step: creating slot variables inside strategy.run fails.
        optimizer.build(model.trainable_variables)
    # The global step lives outside the scope: it is only read and written by the host.
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    if chief and verbose:
        model.summary(print_fn=lambda line, **_: print(line))

    # --- Restore (resume), or warm-start a new run from other weights.
    restored = checkpoints.restore_latest(checkpoint, model_dir)
    step = int(step_var.numpy())
    if restored and warm_start:
        logging.warning("%s already has checkpoints: resuming at step %d, --warm_start %s is not used",
                        model_dir, step, warm_start)
    elif warm_start:
        checkpoints.warm_start(model, warm_start)
    manager = None
    if chief:
        checkpoints.write_run(model_dir, run)
        manager = checkpoints.make_manager(checkpoint, os.path.join(model_dir, "checkpoints"))
    start_epoch = step // steps_per_epoch
    rows = history.read_history(model_dir, up_to_epoch=start_epoch) if chief else []
    best_dice = max([r.get("val_dice", -1.0) for r in rows], default=-1.0)
    logging.info("%s at step %d (epoch %d of %d, %d steps per epoch, global batch %d, %s)",
                 "resuming" if restored else "starting", step, start_epoch + 1, epochs,
                 steps_per_epoch, batch_size, precision)

    train_steps = steps_lib.make_train_steps(strat, model, optimizer, batch_size, dice_weight)
    eval_steps = steps_lib.make_eval_steps(strat, model, dice_weight)
    writer = summaries.Writer(model_dir) if chief else None
    last_checkpoint = restored
    row = dict(rows[-1]) if rows else {}
    # Auto chunking only in one process: every worker must run the same steps per call, and
    # timings differ between workers (set --steps_per_execution for multi-worker jobs).
    chunk = steps_per_execution or 1
    grow_chunk = not steps_per_execution and distribute.num_workers(strat) == 1
    if start_epoch >= epochs:
        logging.info("%s has already trained %d epochs: nothing left to train", model_dir, epochs)
    for epoch in range(start_epoch, epochs):
        skip = step - epoch * steps_per_epoch  # global steps of this epoch already trained

        def train_fn(ctx, epoch=epoch, skip=skip):
            per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            return dataset_lib.make_dataset(
                data_dir, "train", batch_size=batch_size, training=True, seed=seed, epoch=epoch,
                skip_batches=skip * per_pipeline, augment=augment, input_context=ctx,
                augment_options=augment_options)

        iterator = iter(_distributed(strat, train_fn))
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=("loss", "dice", "img/s"),
                                  verbose=1 if (chief and verbose) else 0)
        bar.update(skip)
        print_epoch = chief and verbose
        if print_epoch:
            print(f"Epoch {epoch + 1}/{epochs}")
        sums = {k: 0.0 for k in steps_lib.METRIC_KEYS}
        t0 = time.perf_counter()
        while step < (epoch + 1) * steps_per_epoch:
            # A chunk ends at the epoch's end and at each checkpoint boundary.
            boundary = (epoch + 1) * steps_per_epoch
            if checkpoint_every_steps:
                boundary = min(boundary, (step // checkpoint_every_steps + 1) * checkpoint_every_steps)
            n = min(chunk, boundary - step)
            call_start = time.perf_counter()
            totals = {k: float(v) for k, v in train_steps(iterator, tf.constant(n)).items()}
            if grow_chunk and n == chunk and time.perf_counter() - call_start < AUTO_CHUNK_SECONDS:
                chunk = min(2 * chunk, MAX_AUTO_CHUNK)
            step += n
            _check_finite(totals, step, last_checkpoint)
            sums = {k: sums[k] + totals[k] for k in sums}
            rate = sums["count"] / max(time.perf_counter() - t0, 1e-9)
            bar.update(step - epoch * steps_per_epoch, values=[
                ("loss", totals["loss"] / totals["count"]), ("dice", totals["dice"] / totals["count"]),
                ("img/s", rate)])
            if writer:
                writer.scalars(step, {"train/loss_step": totals["loss"] / totals["count"]})
            if checkpoint_every_steps and step % checkpoint_every_steps == 0 and step % steps_per_epoch:
                step_var.assign(step)
                last_checkpoint = checkpoints.save(checkpoint, manager, step) or last_checkpoint
        seconds = time.perf_counter() - t0

        # --- Epoch end: validate, record, plot, checkpoint, keep the best model.
        train_means = steps_lib.means(sums) if sums["count"] else {}
        val_means = {}
        if val_steps:
            def val_fn(ctx):
                return dataset_lib.make_dataset(data_dir, "val", batch_size=batch_size,
                                                training=False, input_context=ctx)
            val_means = steps_lib.means(eval_steps(iter(_distributed(strat, val_fn)), tf.constant(val_steps)))
        row = {"epoch": epoch + 1, "step": step, **train_means,
               **{"val_" + k: v for k, v in val_means.items()},
               "learning_rate": float(optimizer.learning_rate.numpy()),
               "images_per_s": sums["count"] / max(seconds, 1e-9), "seconds": seconds}
        step_var.assign(step)
        last_checkpoint = checkpoints.save(checkpoint, manager, step) or last_checkpoint
        if chief:
            rows.append(row)
            history.write_history(model_dir, rows)
            history.plot_history(model_dir, rows)
            writer.epoch(step, row)
            if val_steps and num_summary_images:
                writer.validation_images(step, model, data_dir, num_summary_images)
            if val_means and val_means["dice"] > best_dice:
                best_dice = val_means["dice"]
                _save_model(model, os.path.join(model_dir, "best", FINAL_MODEL))
            if verbose:
                print(" - ".join(f"{k} {row[k]:.4f}" for k in
                                 ("loss", "dice", "val_loss", "val_dice") if k in row))

    row["weights_sha256"] = weights_digest(model)
    logging.info("final weights sha256 %s", row["weights_sha256"])

    # --- Export (chief only): the final model and a SavedModel for serving.
    if chief:
        _save_model(model, os.path.join(model_dir, FINAL_MODEL))
        model.export(os.path.join(model_dir, SAVED_MODEL_DIR), verbose=False)
        if writer:
            writer.close()
        if verbose:
            print(f"Final model: {os.path.join(model_dir, FINAL_MODEL)}")
            if best_dice >= 0:
                print(f"Best by validation Dice ({best_dice:.4f}): "
                      f"{os.path.join(model_dir, 'best', FINAL_MODEL)}")
            else:
                print("No validation split: no best model was kept")
    row["chief"] = chief
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


def _save_model(model: keras.Model, path: str) -> None:
    """Saves a `.keras` file atomically (a crash never leaves a truncated model)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path[:-len(".keras")] + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)
