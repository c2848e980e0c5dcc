"""Workers agree before the first step: one precision for the group, and the same settings.

Each worker of a multi-worker run decides on its own, from its own flags, devices and
files, what it computes; data parallelism only works when those decisions are equal.
When they are not, the workers enter different collectives: at best TensorFlow fails in
the variable broadcast with a message that names no option ("Collective instance 202
expected type 1 and data_type 1 but got type 1 and data_type 9": one worker in float32,
one in mixed_float16), at worst one worker runs a collective the other never enters and
the group waits forever; options that change no shape (a learning rate) are silently
overridden by the chief's broadcast of the initial weights.

So, once the strategy exists and before anything collective runs, every worker posts
what it will compute into the coordination service's key-value store (no collective:
a mismatch cannot hang or corrupt it; tensorflow/python/eager/context.py:945-958) and
reads everybody else's:

* `--precision auto` is resolved ONCE for the group from every worker's devices (the
  lowest GPU compute capability; bfloat16 on CPUs only if every worker has it), so
  workers on different hardware cannot pick different dtypes;
* the settings that must match are compared: every option of config.json that changes
  the computation (all but PER_PROCESS), the number and kind of local devices, the
  all-reduce implementation, the records' manifest, the project's code, version, and the
  TensorFlow/Keras versions. Any difference: every worker raises WorkersDisagreeError,
  one line naming the worker, the field and both values, within seconds;
* after the restore, the restored step is compared the same way (workers that do not see
  the same --model_dir would train on from different steps).

A worker that never posts is waited for EXCHANGE_TIMEOUT_S at most, then named.
"""

import hashlib
import importlib.metadata
import json
import os

import keras
import tensorflow as tf

# The coordination service's key-value store has no public API in TF 2.21; these calls
# are what TensorFlow's own PreemptionCheckpointHandler uses (failure_handling.py).
from tensorflow.python.eager import context as tf_context

from core import files
from core.errors import UserError
from launch.training import distribute
from launch.training.config import TrainConfig

# Options each process may set for itself: they change nothing the workers compute together.
PER_PROCESS = (
    "verify_records",  # how thoroughly this process checks the records before it starts
    "stall_minutes",  # this process's watchdog
    "collective_timeout",  # a debugging bound on this process's waits
)
# How long a worker waits for another's settings. All have passed the strategy's cluster
# registration by then, so a worker missing this long has stalled or is gone.
EXCHANGE_TIMEOUT_S = 120.0
# The folder holding the project's packages (this file is launch/training/agreement.py).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The project's packages whose code every worker must run identically.
CODE_PACKAGES = ("core", "preprocessing", "pipeline", "model", "launch")


class WorkersDisagreeError(UserError):
    """The workers of one run would compute different things; nothing was trained."""


def device_facts() -> dict:
    """What this process's devices say about precision and replicas (JSON-ready)."""
    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(g) for g in gpus]
    flags = set() if gpus else distribute.this_cpu_flags()
    local = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return {
        "devices": f"{len(local)} {'GPU' if gpus else 'CPU'}",
        "gpu_capabilities": [list(d.get("compute_capability", (0, 0))) for d in details],
        "cpu_bf16": sorted(flags.intersection(distribute.CPU_BF16_FLAGS)),
    }


def group_precision(requested: str, facts: list[dict]) -> tuple[str, str]:
    """(precision, why) of the whole group: `requested`, or for 'auto' the choice for the
    weakest devices of all workers (distribute.choose_precision); pure."""
    if requested != "auto":
        return requested, "--precision"
    capabilities = [tuple(c) for f in facts for c in f["gpu_capabilities"]]
    common_flags = set.intersection(*(set(f["cpu_bf16"]) for f in facts)) if facts else set()
    chosen, why = distribute.choose_precision(capabilities, common_flags)
    return chosen, (why + f", over {len(facts)} workers" if len(facts) > 1 else why)


def code_digest(root: str | None = None) -> str:
    """sha256 (16 hex digits) of the project's Python sources (CODE_PACKAGES)."""
    root = root or PROJECT_ROOT
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for folder, dirs, names in sorted(os.walk(os.path.join(root, package))):
            dirs.sort()
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()[:16]


def project_version() -> str:
    try:
        return importlib.metadata.version("isic-unet")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def records_digest(data_dir: str) -> str:
    """sha256 (16 hex digits) of the records' manifest.json (names, sizes and hashes of
    every shard), or 'no manifest'."""
    path = os.path.join(data_dir, "manifest.json")  # also gs://: os.path.join is "/"-joining
    if not files.exists(path):
        return "no manifest"
    return hashlib.sha256(files.read_bytes(path)).hexdigest()[:16]


def settings(config: TrainConfig, data_dir: str, facts: dict, all_reduce: str) -> dict[str, str]:
    """{field: value} of everything that must be equal on every worker."""
    options = {
        f"--{name}": value if isinstance(value, str) else json.dumps(value)
        for name, value in sorted(json.loads(json.dumps(config.__dict__)).items())
        if name not in PER_PROCESS
    }
    return {
        **options,
        "local devices": facts["devices"],
        "all-reduce": all_reduce,
        "records (manifest sha256)": records_digest(data_dir),
        "code (sha256 of the project's .py files)": code_digest(),
        "isic-unet version": project_version(),
        "TensorFlow": tf.__version__,
        "Keras": keras.__version__,
    }


def differences(posted: list[dict[str, str]]) -> list[str]:
    """'worker 1 has --learning_rate 0.03, worker 0 0.001' for each field where a worker
    differs from worker 0 (the chief), in worker then field order; pure."""
    found = []
    for index, mine in enumerate(posted[1:], start=1):
        for field in sorted(set(mine) | set(posted[0])):
            a, b = mine.get(field, "(missing)"), posted[0].get(field, "(missing)")
            if a != b:
                found.append(f"worker {index} has {field} {a}, worker 0 {b}")
    return found


def exchange(round_name: str, payload: dict, index: int, count: int, peers: list[str]) -> list[dict]:
    """Posts `payload` as worker `index` and returns every worker's, in worker order.

    Through the coordination service's key-value store (set, then a blocking get with a
    deadline): no collective runs, so workers that disagree cannot hang here."""
    ctx = tf_context.context()
    ctx.set_config_key_value(f"isic-train/{round_name}/{index}", json.dumps(payload))
    posted = []
    for other in range(count):
        try:
            value = ctx.get_config_key_value(
                f"isic-train/{round_name}/{other}", timeout_in_ms=int(EXCHANGE_TIMEOUT_S * 1000)
            )
        except tf.errors.OpError as e:  # DeadlineExceeded, or the service reports the peer gone
            where = f" ({peers[other]})" if other < len(peers) else ""
            raise WorkersDisagreeError(
                f"worker {other}{where} did not share its {round_name} within "
                f"{EXCHANGE_TIMEOUT_S:.0f} s ({type(e).__name__}): it is stuck before training "
                "or gone; its own log says why"
            ) from None
        posted.append(json.loads(value))
    return posted


def agree_at_start(strategy, config: TrainConfig, data_dir: str, peers: list[str]) -> tuple[str, str]:
    """Every worker's settings compared, and (precision, why) decided for the group.

    One process: its own devices decide `--precision auto`, nothing to compare."""
    facts = device_facts()
    workers = distribute.num_workers(strategy)
    if workers == 1:
        return group_precision(config.precision, [facts])
    index = distribute.task_index(strategy)
    all_reduce = distribute.all_reduce_name(strategy)
    mine = {"facts": facts, "settings": settings(config, data_dir, facts, all_reduce)}
    posted = exchange("settings", mine, index, workers, peers)
    wrong = differences([p["settings"] for p in posted])
    if wrong:
        raise WorkersDisagreeError(
            "the workers disagree: "
            + "; ".join(wrong)
            + ". Start every worker with the same options, records and software "
            "(docs/scaling.md, 'Workers agree before the first step')"
        )
    return group_precision(config.precision, [p["facts"] for p in posted])


def agree_on_resume(strategy, step: int, checkpoint: str | None, peers: list[str]) -> None:
    """Every worker restored the same step (they must read the same --model_dir)."""
    workers = distribute.num_workers(strategy)
    if workers == 1:
        return
    name = os.path.basename(checkpoint) if checkpoint else "no checkpoint"
    mine = {"restored step": f"{step} ({name})"}
    posted = exchange("restored step", mine, distribute.task_index(strategy), workers, peers)
    wrong = differences(posted)
    if wrong:
        raise WorkersDisagreeError(
            "the workers resumed from different checkpoints: "
            + "; ".join(wrong)
            + ". Every worker must see the same --model_dir (a shared filesystem or bucket)"
        )
