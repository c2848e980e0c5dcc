"""What a stop signal waits for, measured: one training call, one validation call, one save.

    python -m benchmarks.stop_time [--base_filters 16] [--image_size 128] [--batch_size 16]

The time from SIGTERM to the exit of a worker is at most (docs/scaling.md):
one process: the step in flight (a call ends after it, training or validation) + a save;
several workers: TensorFlow's 1 s poll + the call in flight + one more call + a save
(+ a barrier); validation calls are no longer than training calls. This prints each term
(median of a few repeats, one process, the real model and checkpoint code), those
bounds, and how long checking a checkpoint's files takes (what a resume does first).
The defaults are the CPU sample recipe's model (launch/configs/isic2017_sample_cpu.flags);
about a minute on 2 CPU cores.
"""

import argparse
import statistics
import tempfile
import time


def measure(base_filters: int, image_size: int, batch_size: int, repeats: int = 5) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from launch.training import checkpoint_integrity as integrity
    from launch.training import checkpoints
    from launch.training import steps as steps_lib
    from model import losses
    from model import unet

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = unet.build_unet(image_size, base_filters, bn_momentum=0.9)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, image_size, image_size, 3), np.float32)
    masks = (rng.random((batch_size, image_size, image_size, 1)) > 0.5).astype(np.float32)
    weights = np.ones((batch_size,), np.float32)
    train = tf.data.Dataset.from_tensors((images, masks)).repeat()
    val = tf.data.Dataset.from_tensors((images, masks, weights)).repeat()
    train_steps = steps_lib.make_train_steps(strategy, model, optimizer, batch_size, losses.training_loss())
    eval_steps = steps_lib.make_eval_steps(strategy, model, losses.training_loss())
    train_it = iter(strategy.experimental_distribute_dataset(train))
    val_it = iter(strategy.experimental_distribute_dataset(val))
    train_steps(train_it, 1)  # traced before timing
    eval_steps(val_it, 1)

    def timed(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    with tempfile.TemporaryDirectory() as model_dir:
        saver = checkpoints.Saver(checkpoint, model_dir, chief=True)
        counter = iter(range(1, 1000))
        save = timed(lambda: saver.save(next(counter)))
        check = timed(lambda: integrity.check(saver.last))  # what a resume checks first
    result = {
        "train_call_s": timed(lambda: train_steps(train_it, 1)),
        "eval_call_s": timed(lambda: eval_steps(val_it, 1)),
        "save_s": save,
        "check_s": check,
        "parameters": model.count_params(),
    }
    result["one_process_bound_s"] = result["train_call_s"] + result["save_s"]
    result["workers_bound_s"] = 1.0 + 2 * result["train_call_s"] + result["save_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_filters", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    for key, value in measure(args.base_filters, args.image_size, args.batch_size).items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
