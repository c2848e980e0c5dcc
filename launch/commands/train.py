"""`isic-train`: train the U-Net on TFRecords, on one device, all local GPUs or a cluster.

  isic-train --data_dir records/ --model_dir runs/unet [--flagfile launch/configs/X.flags]

Running the same command again resumes from the model directory's last checkpoint.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from launch import cli as runtime
from launch import console_tmp as console

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None, "TFRecord dataset directory (with manifest.json) from isic-preprocess.")
flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, plots and models go. An existing "
                    "model directory is resumed from its last checkpoint.")
flags.DEFINE_integer("epochs", 20, "Number of passes over the training split.")
flags.DEFINE_integer("batch_size", 32, "GLOBAL batch size, split evenly across all replicas.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak Adam learning rate. Scale it with the global batch "
                   "(linearly from 1e-3 at batch 32, with warmup) when you scale out.")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "cosine"],
                  "Learning-rate schedule: constant, or cosine decay to 0 over the run.")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear learning-rate warmup (cosine schedule only).")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (AdamW) when > 0.")
flags.DEFINE_integer("base_filters", 64, "Filters of the first U-Net block (64 = 31.0M parameters); "
                     "8-16 for CPU runs.")
flags.DEFINE_bool("sync_batch_norm", False, "Batch-norm statistics over the global batch across "
                  "replicas (one all-reduce per layer); use when per-replica batches are small.")
flags.DEFINE_float("dice_weight", 1.0, "Loss = BCE + dice_weight * (1 - soft Dice).")
flags.DEFINE_float("bn_momentum", 0.9, "Momentum of the batch-norm moving statistics (Keras' "
                   "default is 0.99; 0.9 tracks the weights within ~10 steps, see docs/recipes.md).")
flags.DEFINE_bool("augment", True, "Flips, rotations, scale and colour jitter on training batches.")
flags.DEFINE_float("augment_strength", 1.0, "Multiplies rotation (15 deg), zoom (+-10%) and colour "
                   "jitter; 0 keeps only flips and 90-degree rotations.")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                  "auto = mixed_float16 on GPUs with compute capability >= 7.0, float32 otherwise.")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"],
                  "auto = multi_worker when TF_CONFIG (or SLURM) describes a cluster, mirrored over "
                  "all local GPUs (or --num_cpu_devices) when there are several, else one_device.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into this many logical devices "
                     "(to test mirrored training without GPUs).")
flags.DEFINE_integer("checkpoint_every_steps", 100, "Also checkpoint every N steps (0: epoch ends only).")
flags.DEFINE_integer("steps_per_execution", 0, "Training steps run per tf.function call (fewer "
                     "Python round trips; progress updates per chunk). 0 = auto: start at 1 and "
                     "double while a call takes under 0.2 s, up to 256 (one process only; multi-worker "
                     "jobs keep 1 unless set).")
flags.DEFINE_integer("seed", 0, "Seed of weights, data order and augmentation.")
flags.DEFINE_bool("deterministic", False, "Enable TF op determinism: a killed and resumed run "
                  "ends bit-identical to an uninterrupted one (slower on GPUs).")
flags.DEFINE_string("warm_start", None, "Start a NEW run from these weights (a .keras file or "
                    "another model directory). Ignored, with a warning, when --model_dir resumes.")
flags.DEFINE_float("collective_timeout", 120.0, "Seconds a multi-worker collective waits for a "
                   "peer before failing the job (a dead worker never hangs it).")
flags.DEFINE_integer("summary_images", 3, "Validation images logged to TensorBoard per epoch.")

flags.mark_flags_as_required(["data_dir", "model_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.batch_size <= 0 or FLAGS.epochs <= 0 or FLAGS.steps_per_execution < 0:
        raise app.UsageError("--batch_size and --epochs must be positive, --steps_per_execution >= 0")
    if not 0.0 <= FLAGS.bn_momentum < 1.0 or FLAGS.augment_strength < 0:
        raise app.UsageError("--bn_momentum must be in [0, 1) and --augment_strength >= 0")
    runtime.prefer_onednn()  # before TensorFlow is imported
    # Imported after flag parsing so `isic-train --help` answers without loading TensorFlow.
    from launch.training import checkpoints
    from launch.training import trainer

    try:
        result = trainer.train(
            FLAGS.data_dir, FLAGS.model_dir, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule,
            warmup_epochs=FLAGS.warmup_epochs, weight_decay=FLAGS.weight_decay,
            base_filters=FLAGS.base_filters, sync_batch_norm=FLAGS.sync_batch_norm,
            bn_momentum=FLAGS.bn_momentum, dice_weight=FLAGS.dice_weight, augment=FLAGS.augment,
            augment_strength=FLAGS.augment_strength,
            precision=FLAGS.precision, strategy=FLAGS.strategy,
            num_cpu_devices=FLAGS.num_cpu_devices,
            checkpoint_every_steps=FLAGS.checkpoint_every_steps,
            steps_per_execution=FLAGS.steps_per_execution, seed=FLAGS.seed,
            deterministic=FLAGS.deterministic, warm_start=FLAGS.warm_start,
            collective_timeout_s=FLAGS.collective_timeout, num_summary_images=FLAGS.summary_images,
            flags_text=FLAGS.flags_into_string())
    except (trainer.NonFiniteLossError, checkpoints.CheckpointMismatchError,
            FileNotFoundError, ValueError) as e:
        logging.error("%s", e)
        print(f"isic-train: error: {e}", file=sys.stderr)
        return 1
    if result.get("chief") and "epoch" in result:
        dice = (f"Validation Dice {result['val_dice']:.4f}" if "val_dice" in result
                else "No validation split")
        print(f"{dice} after epoch {result['epoch']}; model, plots and logs in {FLAGS.model_dir}")
    print(f"weights sha256 {result['weights_sha256']}")
    return 0


def run():
    console.run(main, __name__)


if __name__ == "__main__":
    run()
