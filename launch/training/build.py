"""What a run trains, built from its `TrainConfig`: the model, the optimizer, the loss and the
step functions. The one place that builds them: the trainer, isic-bench's training rows,
the GPU check and the tests call it, so every benchmark row times what `isic-train` trains
(Adam or AdamW, the learning-rate schedule, the loss scaling of mixed_float16, XLA).

The dtype policy is the caller's (distribute.process_settings sets it for a run): the
model's layers take the global policy when they are built here.
"""

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from launch.training import steps as steps_lib
from launch.training import weight_average
from launch.training import xla
from launch.training.config import TrainConfig
from model import encoder_unet
from model import losses
from model import unet


def build_model(config: TrainConfig, image_size: int, depth: int | None = None) -> keras.Model:
    """The U-Net, or `config.encoder` under a U-Net decoder, for `image_size`^2 RGB inputs.

    `depth` (U-Net only): None is `config.depth` (--depth).
    A pretrained encoder loads its `config.encoder_weights` here (a resume overwrites them).
    """
    if config.encoder == "unet":
        return unet.build_unet(
            image_size,
            config.base_filters,
            config.depth if depth is None else depth,
            bn_momentum=config.bn_momentum,
            sync_batch_norm=config.sync_batch_norm,
        )
    return encoder_unet.build_encoder_unet(
        image_size,
        config.base_filters,
        config.encoder,
        config.encoder_weights,
        bn_momentum=config.bn_momentum,
        sync_batch_norm=config.sync_batch_norm,
    )


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The constant rate, or a cosine decay to 0 over the run after a linear warmup."""
    if config.lr_schedule != "cosine":
        return config.learning_rate
    warmup = int(config.warmup_epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(config.epochs * steps_per_epoch - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def build_optimizer(config: TrainConfig, steps_per_epoch: int, precision: str) -> keras.optimizers.Optimizer:
    """Adam (AdamW when `config.weight_decay` > 0) at `learning_rate`, in a
    LossScaleOptimizer under mixed_float16. Not yet built (see `optimizer_for`)."""
    rate = learning_rate(config, steps_per_epoch)
    optimizer = (
        keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
        if config.weight_decay
        else keras.optimizers.Adam(rate)
    )
    # float16 needs loss scaling; bfloat16 has float32's exponent range and does not.
    # The optimizer holds the scale; steps._loss_scaled_step drives it (Keras' own
    # apply decides per replica, which breaks under tf.distribute: steps.py says why).
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def optimizer_for(model: keras.Model, config: TrainConfig, steps_per_epoch: int, precision: str):
    """`build_optimizer`, built on `model`'s trainable variables; call it inside the strategy
    scope that created the model."""
    optimizer = build_optimizer(config, steps_per_epoch, precision)
    # Built before the first step: creating slot variables inside strategy.run fails.
    optimizer.build(model.trainable_variables)
    return optimizer


def model_and_optimizer(
    strategy: tf.distribute.Strategy,
    config: TrainConfig,
    image_size: int,
    steps_per_epoch: int,
    precision: str,
    depth: int | None = None,
) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """(model, optimizer), created inside the strategy scope so variables are mirrored."""
    with strategy.scope():
        model = build_model(config, image_size, depth)
        return model, optimizer_for(model, config, steps_per_epoch, precision)


def average_for(
    strategy: tf.distribute.Strategy,
    config: TrainConfig,
    model: keras.Model,
    image_size: int,
    depth: int | None = None,
) -> weight_average.WeightAverage | None:
    """The moving average of `model`'s weights when `config.ema_decay` > 0 (else None):
    a second model of the same architecture, started from `model`'s current weights,
    created inside the strategy scope."""
    if not config.ema_decay:
        return None
    with strategy.scope():
        average_model = build_model(dataclasses.replace(config, encoder_weights="none"), image_size, depth)
        return weight_average.WeightAverage(model, average_model, config.ema_decay)


def training_loss(config: TrainConfig) -> steps_lib.LossFn:
    """(masks [b,S,S,1], probabilities [b,S,S,1]) -> float32 [b]: BCE + weighted Dice."""
    return losses.training_loss(config.dice_weight, config.recall_weight)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The step functions of a run (steps.make_train_steps, make_eval_steps)."""

    train: Callable  # (iterator, num_steps) -> {METRIC_KEYS: sum}
    eval: Callable  # (iterator, num_steps) -> {METRIC_KEYS: sum}
    jit_compile: bool  # what --jit_compile resolved to on this machine


def make_steps(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    config: TrainConfig,
    stop: tf.Variable | None = None,
    average: weight_average.WeightAverage | None = None,
) -> Steps:
    """The train and eval steps of `model` and `optimizer` with the config's loss, global
    batch and `--jit_compile` (resolved for this machine; the log says why). With
    `average`, each training step also moves it, and the eval steps score its model."""
    jit = xla.resolve_jit_compile(config, strategy.num_replicas_in_sync)
    loss_fn = training_loss(config)
    scored = average.model if average else model
    return Steps(
        train=steps_lib.make_train_steps(
            strategy, model, optimizer, config.batch_size, loss_fn, stop, jit_compile=jit, average=average
        ),
        eval=steps_lib.make_eval_steps(strategy, scored, loss_fn, stop=stop, jit_compile=jit),
        jit_compile=jit,
    )
