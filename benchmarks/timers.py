"""The two training loops the benchmarks time, built the way their users build them.

Ours is the trainer's own: model, optimizer, loss and steps from launch/training/build.py
(`build.make_steps`, so `--jit_compile` too), driven through the trainer's dataset
distribution and stop flag. The baseline is `model.fit` on the same model, loss and
optimizer, with Keras' defaults otherwise (`jit_compile="auto"`: off on a CPU-only
machine; `steps_per_execution=1`). Stage 3 (loop.py) and stage 4 (training.py) use them.
"""

import time

import numpy as np

from launch.training.config import TrainConfig


def constant_dataset(batch_size: int, image_size: int):
    """One random (images [b,S,S,3], masks [b,S,S,1]) batch repeated forever, from memory."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    masks = (rng.uniform(size=(batch_size, image_size, image_size, 1)) > 0.5).astype(np.float32)
    return tf.data.Dataset.from_tensors((images, masks)).repeat()


def ours_train_steps(config: TrainConfig, build_model, dataset, steps_per_epoch: int = 100):
    """(train_steps, iterator) as launch/training/trainer.py builds them on one CPU device:
    `build_model()` inside the strategy scope, then the builder's optimizer and steps."""
    import tensorflow as tf

    from launch.training import build
    from launch.training import distribute
    from launch.training import preemption

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():  # variables must be created in the scope, as in the trainer
        model = build_model()
        optimizer = build.optimizer_for(model, config, steps_per_epoch, "float32")
    # The trainer's stop flag too (launch/training/preemption.py): one read per step.
    with tf.device(preemption.HOST):
        stop = tf.Variable(False, trainable=False)
    train_steps = build.make_steps(strategy, model, optimizer, config, stop=stop).train
    # The trainer's own way of distributing its datasets (input options included).
    iterator = iter(distribute.distribute_datasets(strategy, lambda ctx: dataset))
    return train_steps, iterator


def compiled_for_fit(model, config: TrainConfig, steps_per_execution: int = 1, steps_per_epoch: int = 100):
    """The same model compiled as a plain Keras user would: the builder's optimizer and our
    loss, no metrics, Keras' defaults otherwise."""
    from launch.training import build

    model.compile(
        optimizer=build.build_optimizer(config, steps_per_epoch, "float32"),
        steps_per_execution=steps_per_execution,
        loss=build.training_loss(config),
    )
    return model


class OursTimer:
    """Our train_steps on one CPU replica."""

    def __init__(self, config: TrainConfig, build_model, dataset):
        self._train_steps, self._iterator = ours_train_steps(config, build_model, dataset)

    def run(self, steps: int) -> None:
        self._train_steps(self._iterator, steps)  # returns once the sums are fetched

    def time(self, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of one call of `steps` steps."""
        start, cpu = time.perf_counter(), time.process_time()
        self.run(steps)
        return time.perf_counter() - start, time.process_time() - cpu


class FitTimer:
    """model.fit on the same model, compiled as a plain Keras user would."""

    def __init__(self, config: TrainConfig, build_model, dataset):
        self._model = compiled_for_fit(build_model(), config)
        self._dataset = dataset

    def run(self, steps: int, callbacks=()) -> None:
        self._model.fit(
            self._dataset,
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=list(callbacks),
        )

    def time(self, steps: int) -> tuple[float, float]:
        """(wall, CPU) seconds of `steps` steps: from the end of an untimed first step of
        the fit call (its iterator and callbacks start there) to the end of the last."""
        import keras

        ends = []
        stamp = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: ends.append((time.perf_counter(), time.process_time()))
        )
        self.run(1 + steps, callbacks=[stamp])
        return ends[-1][0] - ends[0][0], ends[-1][1] - ends[0][1]
