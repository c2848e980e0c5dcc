"""Options of `isic-bench`: each field's name, default and help, once.

Standard library only, so `isic-bench --help` does not wait for TensorFlow. The comma
lists keep today's flag syntax (`--stages 3,4`): they are strings here, checked in
`__post_init__`, read as integers through the properties.
"""

import dataclasses

from core.errors import UserError
from core.options import check_fields
from core.options import option

STAGES = (1, 2, 3, 4, 5, 6)  # see benchmarks/stages.py
GPU_CHECK = "gpu"  # --stages gpu: benchmarks/gpu.py
# Weak scaling (the per-GPU batch fixed): all N GPUs must reach this share of N x one GPU.
# A healthy NVLink machine should; a broken setup (gRPC ring instead of NCCL, GPUs shared
# by two processes, no peer-to-peer) falls well below. The 31M-parameter U-Net
# all-reduces 124 MB of float32 gradients per step, so PCIe-only machines may fall below
# it too. NVIDIA's UNet_Medical reports 0.59-0.89 on 8 A100s (README, "Before a long GPU
# run"). Not calibrated on a GPU yet.
GPU_SCALING_FLOOR = 0.7


def parse_ints(name: str, text: str, allowed: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """'3, 4' -> (3, 4); UserError unless every item is a positive integer (in `allowed`)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        numbers = tuple(int(item) for item in items)
    except ValueError:
        raise UserError(f"--{name} must be a comma-separated list of integers, got {text!r}") from None
    if not numbers or min(numbers) < 1 or (allowed and not set(numbers) <= set(allowed)):
        expected = f"values from {list(allowed)}" if allowed else "positive integers"
        raise UserError(f"--{name} got {text!r}; expected {expected}")
    return numbers


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """`isic-bench`: which stages to run and at which sizes (see benchmarks/stages.py)."""

    quick: bool = option(
        False, "Tiny settings (a few minutes): checks that every stage runs; the figures mean little."
    )
    stages: str = option(
        "1,2,3,4,5,6",
        "Stages to run, e.g. 3,4; or `gpu` alone: the GPU "
        "acceptance check to run before a long GPU job (benchmarks/gpu.py).",
    )
    unet_filters: str = option("16,32,64", "U-Net base filters of stage 4.")
    profile_ops: bool = option(
        False,
        "Stage 4: also trace 2 steps of ours and of model.fit per "
        "width with the TensorFlow profiler and print the time per op "
        "type side by side (docs/performance.md).",
    )
    inference_filters: int = option(32, "U-Net base filters of the inference measurement.", lower_bound=1)
    gpu_scaling_floor: float = option(
        GPU_SCALING_FLOOR,
        "--stages gpu fails when images/s on all N GPUs is below this share of N x one GPU.",
        lower_bound=0.0,
    )

    def __post_init__(self):
        check_fields(self)
        if not self.gpu_check:
            if GPU_CHECK in self.stages.replace(" ", "").split(","):
                raise UserError(
                    f"--stages {GPU_CHECK} runs alone (it needs the GPUs to itself); got {self.stages!r}"
                )
            parse_ints("stages", self.stages, STAGES)
        parse_ints("unet_filters", self.unet_filters)

    @property
    def gpu_check(self) -> bool:
        """`--stages gpu`: the GPU acceptance check instead of the numbered stages."""
        return self.stages.strip() == GPU_CHECK

    @property
    def stage_numbers(self) -> tuple[int, ...]:
        """The selected stages, each once, in order (none for the GPU check)."""
        if self.gpu_check:
            return ()
        return tuple(sorted(set(parse_ints("stages", self.stages, STAGES))))

    @property
    def unet_filter_counts(self) -> tuple[int, ...]:
        """Stage 4's U-Net widths, as given."""
        return parse_ints("unet_filters", self.unet_filters)
