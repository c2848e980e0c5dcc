"""Options of `isic-launch`: each field's name, default and help, once.

Standard library only: the launcher never imports TensorFlow (its workers do).
"""

import dataclasses

from core.errors import UserError
from core.options import check_fields
from core.options import option


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """`isic-launch`: N local worker processes as one group (launch/cluster/process_group.py)."""

    num_workers: int = option(2, "Worker processes to start on this machine.", lower_bound=1)
    port: int | None = option(
        None,
        "First port to try for the workers' gRPC servers (the "
        "next free ones above it are used). Default: ports picked by "
        "the kernel.",
        lower_bound=1,
    )
    restarts: int = option(
        0,
        "Relaunch the whole group up to this many times after a worker "
        "failed; training resumes from --model_dir's last checkpoint.",
        lower_bound=0,
    )
    # A worker stops within TensorFlow's 1 s poll + two calls + a save + its exit
    # (docs/scaling.md, "Preemption and time limits"; benchmarks/stop_time.py measures the
    # terms). 30 s covers that for the CPU recipes with room for a loaded machine, and is
    # Kubernetes' default terminationGracePeriodSeconds; it only matters when a worker
    # does not exit by itself (the launcher ends as soon as all have).
    grace_seconds: float = option(
        30.0,
        "Seconds the workers get to exit after SIGTERM (on "
        "Ctrl-C or SIGTERM to the launcher: time to finish the "
        "calls in flight and write their checkpoint; when a worker "
        "died: how long the others may outlive it) before they are "
        "SIGKILLed. Raise it when a step plus a checkpoint save "
        "takes longer (large models, slow disks).",
        lower_bound=0,
    )
    gpus_per_worker: int = option(
        0,
        "GPUs each worker sees (CUDA_VISIBLE_DEVICES): worker i "
        "gets the i-th G of this machine's visible GPUs. 0 = an even "
        "share of them (none on a machine without GPUs). One machine "
        "with several GPUs needs no launcher: isic-train mirrors "
        "over them.",
        lower_bound=0,
    )

    def __post_init__(self):
        check_fields(self)
        if self.port is not None and self.port > 65535:
            raise UserError(f"--port must be in 1..65535, got {self.port}")
