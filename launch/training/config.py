"""Options of `isic-train`: each field's name, default and help, once.

`TrainConfig` inherits the augmentation fields of `pipeline.config.AugmentConfig`, so the
command has one flat set of flags and the input pipeline reads its options from the same
object. Standard library only: `isic-train --help` builds its flags from these fields
without loading TensorFlow. Each run writes its config into `model_dir/config.json`.
"""

import dataclasses
import os

from core.errors import UserError
from core.options import option
from pipeline.config import AugmentConfig
from pipeline.verify import LEVELS as VERIFY_LEVELS

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
JIT_COMPILE = ("auto", "on", "off")
# The seed's U-Net, and pretrained encoders under the same decoder (model/encoders.py lists
# the same names; tests/test_encoders.py checks they agree, so this module needs no TF).
ENCODERS = ("unet", "efficientnet_lite0", "efficientnetv2b0", "mobilenetv3large")
# --steps_per_execution 0: the chunk doubles while a call is faster than this, up to the cap
# (steps.StepsPerCall says why).
AUTO_CHUNK_SECONDS = 0.2
MAX_AUTO_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig(AugmentConfig):
    """`isic-train`: model, optimisation, devices and bookkeeping of one training run."""

    epochs: int = option(20, "Number of passes over the training split.", lower_bound=1)
    batch_size: int = option(32, "GLOBAL batch size, split evenly across all replicas.", lower_bound=1)
    learning_rate: float = option(
        1e-3,
        "Peak Adam learning rate. Scale it with the global batch (linearly from 1e-3 at "
        "batch 32, with warmup) when you scale out.",
        lower_bound=0.0,
    )
    lr_schedule: str = option(
        "constant",
        "Learning-rate schedule: constant, or cosine decay to 0 over the run.",
        choices=LR_SCHEDULES,
    )
    warmup_epochs: float = option(0.0, "Linear learning-rate warmup (cosine schedule only).", lower_bound=0.0)
    weight_decay: float = option(0.0, "Decoupled weight decay (AdamW) when > 0.", lower_bound=0.0)
    base_filters: int = option(
        64, "Filters of the first U-Net block (64 = 31.0M parameters); 8-16 for CPU runs.", lower_bound=1
    )
    depth: int = option(
        4,
        "Levels of the U-Net (--encoder unet): 2x2 max-pools between them, so the records' "
        "image size must be a multiple of 2**depth. 4 is the original network; fewer suit "
        "small images (the tests train at depth 2).",
        lower_bound=1,
    )
    encoder: str = option(
        "unet",
        "unet = the plain U-Net; efficientnet_lite0 (ImageNet weights from the "
        "`pretrained` extra, no network), efficientnetv2b0 or mobilenetv3large (Keras "
        "downloads their ImageNet weights once) = that encoder under a U-Net decoder of "
        "base_filters*(8,4,3,2,1) filters (docs/model.md).",
        choices=ENCODERS,
    )
    encoder_weights: str = option(
        "imagenet",
        "Initial weights of a pretrained --encoder: imagenet, none (random "
        "initialisation), or the PATH of the file imagenet would read (the package's .pth for "
        "efficientnet_lite0, Keras' _notop .h5 for the others). Not used by --encoder unet.",
    )
    sync_batch_norm: bool = option(
        False,
        "Batch-norm statistics over the global batch across replicas (one all-reduce "
        "per layer); use when per-replica batches are small.",
    )
    dice_weight: float = option(1.0, "Loss = BCE + dice_weight * (1 - soft Dice).", lower_bound=0.0)
    recall_weight: float = option(
        0.5,
        "Weight of missed lesion pixels in the soft Dice term: 0.5 is soft Dice; above 0.5 it "
        "becomes a Tversky index that costs a missed pixel more than a false one (wider "
        "outlines).",
        lower_bound=0.0,
        upper_bound=1.0,
    )
    ema_decay: float = option(
        0.0,
        "Keep an exponential moving average of the weights (batch-norm statistics too) with "
        "this decay per step, and validate, keep the best model, save and export with the "
        "average (0: off; 0.999 averages over about the last 1,000 steps; the first steps "
        "warm up, docs/model.md).",
        lower_bound=0.0,
        upper_bound=0.99999,
    )
    # Keras' default 0.99 makes the moving statistics lag ~100 steps behind the weights; with
    # the few hundred steps of a run on ISIC-sized data, validation then scores a stale
    # model. 0.9 follows within ~10 steps (docs/recipes.md).
    bn_momentum: float = option(
        0.9,
        "Momentum of the batch-norm moving statistics (Keras' default is 0.99; 0.9 "
        "tracks the weights within ~10 steps, see docs/recipes.md).",
        lower_bound=0.0,
    )
    precision: str = option(
        "auto",
        "auto = mixed_bfloat16 on GPUs with compute capability >= 8.0, "
        "mixed_float16 (dynamic loss scaling) on 7.x, float32 below; on CPUs mixed_bfloat16 "
        "where they compute in bfloat16 (avx512_bf16 or amx_bf16), else float32 (the log says "
        "what it picked and why). A run may resume under another precision.",
        choices=PRECISIONS,
    )
    jit_compile: str = option(
        "auto",
        "Compile each replica's forward and backward pass (and the validation step) with "
        "XLA; the all-reduce and the update stay outside. auto = on for GPUs; on CPUs "
        "where the benchmark measured XLA faster (docs/performance.md, off on the CPU kinds "
        "measured so far); off with --deterministic, or --sync_batch_norm over several "
        "replicas (XLA cannot compile those; `on` is then an error).",
        choices=JIT_COMPILE,
    )
    strategy: str = option(
        "auto",
        "auto = multi_worker when TF_CONFIG (or SLURM) describes a cluster, mirrored "
        "over all local GPUs (or --num_cpu_devices) when there are several, else one_device.",
        choices=STRATEGIES,
    )
    num_cpu_devices: int = option(
        0,
        "Split the CPU into this many logical devices (to test mirrored training without GPUs).",
        lower_bound=0,
    )
    # By time, not steps: a fixed step count is minutes apart on a CPU and under a second
    # apart on a fast GPU (docs/scaling.md, "What is checkpointed").
    checkpoint_every_minutes: float = option(
        10.0,
        "Also checkpoint about every this many minutes of training (0: epoch ends "
        "only). Workers agree on the step, see docs/scaling.md.",
        lower_bound=0.0,
    )
    checkpoint_every_steps: int = option(
        0, "If > 0, checkpoint every N steps instead of by --checkpoint_every_minutes.", lower_bound=0
    )
    steps_per_execution: int = option(
        0,
        "Training steps run per tf.function call (fewer Python round trips; progress "
        "updates per chunk). 0 = auto: start at 1 and double while a call takes under "
        f"{AUTO_CHUNK_SECONDS} s, up to {MAX_AUTO_CHUNK} (one process only; multi-worker jobs "
        "keep 1 unless set).",
        lower_bound=0,
    )
    seed: int = option(0, "Seed of weights, data order and augmentation.", lower_bound=0)
    deterministic: bool = option(
        False,
        "Enable TF op determinism: a killed and resumed run ends bit-identical to an "
        "uninterrupted one (slower on GPUs).",
    )
    warm_start: str | None = option(
        None,
        "Start a NEW run from these weights (a .keras file or another model directory). "
        "Ignored, with a warning, when --model_dir resumes.",
    )
    restart: bool = option(
        False,
        "Begin a new run in a --model_dir that holds one, on purpose: its checkpoints/ "
        "and history.csv are first moved into <model_dir>/replaced-<time>/ (kept, never "
        "deleted). Use it once, not in a command a scheduler retries.",
    )
    # TensorFlow documents timeout_seconds as for debugging only: it starts one sleeping
    # thread per collective (tensorflow/python/distribute/collective_util.py:97-103). A
    # dead worker stops the job without it: the coordination service notices the missed
    # heartbeats and isic-launch/the scheduler stops the group (docs/scaling.md).
    collective_timeout: float = option(
        0.0,
        "Debugging only: seconds a multi-worker collective waits for a peer before "
        "failing the job. 0 (default): no timeout; a dead worker is still noticed by "
        "TensorFlow's coordination service and the launcher.",
        lower_bound=0.0,
    )
    # No legitimate unit of work comes near the default: a training call is planned to last
    # seconds (steps.StepsPerCall), the first one (tracing, XLA) and a save or export of a
    # large model on slow storage a few minutes (docs/scaling.md, "Stalls").
    stall_minutes: float = option(
        30.0,
        "Stall watchdog: a process that makes no progress (no training or validation call, "
        "save or set-up step ends) for this long prints what it was waiting for, the state of "
        "its peers and its Python stacks, and exits with status 142 so isic-launch, SLURM or "
        "Kubernetes restart the group from the last checkpoint. 0: off.",
        lower_bound=0.0,
    )
    summary_images: int = option(3, "Validation images logged to TensorBoard per epoch.", lower_bound=0)
    plots: bool = option(
        True,
        "Redraw loss.png, accuracy.png and dice.png (matplotlib) from history.csv after every "
        "epoch; --noplots leaves the history in history.csv and TensorBoard only.",
    )
    saved_model: bool = option(
        True,
        "Also export the final network as a TensorFlow SavedModel (<model_dir>/saved_model, for "
        "TF Serving; isic-export writes the complete serving model from the .keras file at any "
        "time). --nosaved_model skips it (a few seconds at the end of each run).",
    )
    verify_records: str = option(
        "sha256",
        "Check the train and val shards against manifest.json before training: "
        "sha256 (every byte; one read of the records, see docs/scaling.md), size (record "
        "counts and file ends only, for huge datasets on slow storage), or none.",
        choices=VERIFY_LEVELS,
    )

    profile_steps: str = option(
        "",
        "START,END: write a TensorBoard profiler trace of global steps START+1 to END "
        "into <model_dir>/logs/ (Profile tab of `tensorboard --logdir <model_dir>/logs`; "
        "chief only). Empty: no trace.",
    )

    @property
    def profile_range(self) -> tuple[int, int] | None:
        """(START, END) of --profile_steps, or None."""
        if not self.profile_steps:
            return None
        start, end = (int(v) for v in self.profile_steps.split(","))
        return start, end

    def __post_init__(self):
        super().__post_init__()  # check_fields: choices and lower bounds of every field
        if self.profile_steps:
            try:
                start, end = (int(v) for v in self.profile_steps.split(","))
            except ValueError:
                start, end = -1, -1
            if not 0 <= start < end:
                raise UserError(
                    f"--profile_steps must be START,END with 0 <= START < END "
                    f"(global steps); got {self.profile_steps!r}"
                )
        if not self.bn_momentum < 1.0:
            raise UserError(f"--bn_momentum must be in [0, 1); got {self.bn_momentum!r}")
        if self.encoder != "unet" and self.depth != TrainConfig.depth:
            raise UserError(
                f"--depth {self.depth} applies to --encoder unet only; {self.encoder} has its own "
                "levels (docs/model.md)"
            )
        if self.encoder == "unet" and self.encoder_weights not in ("imagenet", "none"):
            raise UserError(
                f"--encoder_weights {self.encoder_weights} needs a pretrained "
                "--encoder (the unet has no pretrained weights)"
            )
        if self.encoder_weights not in ("imagenet", "none") and not os.path.isfile(self.encoder_weights):
            raise UserError(
                f"--encoder_weights {self.encoder_weights}: no such file (give "
                "imagenet, none or the path of a weights file)"
            )
        if self.warmup_epochs and self.lr_schedule != "cosine":
            raise UserError(
                f"--warmup_epochs {self.warmup_epochs} needs --lr_schedule cosine "
                "(the constant schedule has no warmup)"
            )
        if self.warmup_epochs > self.epochs:
            raise UserError(
                f"--warmup_epochs {self.warmup_epochs} is longer than the run (--epochs {self.epochs})"
            )
