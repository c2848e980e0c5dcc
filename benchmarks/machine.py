"""What the figures were measured on: CPU model and vector extensions, cores, load and
library versions, so that figures from two kinds of machine are never mixed up.

TensorFlow's oneDNN kernels (and its choice to turn them on by default) depend on the
CPU's vector extensions: AVX-512 (`avx512f`) and AMX (`amx_tile`, `amx_bf16`, which
oneDNN uses for bfloat16 matmuls) change which code runs, so they are recorded.
"""

import dataclasses
import os
import platform
from importlib import metadata

# The /proc/cpuinfo flags worth recording: the vector extensions TensorFlow's kernels use.
KERNEL_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
_PACKAGES = ("tensorflow", "keras", "numpy", "pillow")


@dataclasses.dataclass(frozen=True)
class Machine:
    """The machine a run measured (see `describe`)."""

    cpu: str  # model name, e.g. "AMD EPYC"
    cpu_family_model: str  # e.g. "family 25 model 17": virtual machines often name only the
    # vendor line, and two generations of it differ ~1.5x in matmul peak here
    cpu_flags: tuple[str, ...]  # the KERNEL_FLAGS it has
    avx512: bool
    amx: bool
    cores: int  # usable by this process
    python: str
    versions: dict[str, str | None]
    load_average_at_start: tuple[float, ...]

    def summary(self) -> str:
        """One line for the printed header, e.g. 'AMD EPYC, 2 cores, AVX-512 yes, AMX no'."""
        yes_no = {True: "yes", False: "no"}
        return (
            f"{self.cpu} ({self.cpu_family_model}), {self.cores} cores, AVX-512 {yes_no[self.avx512]}, AMX "
            f"{yes_no[self.amx]} (flags: {' '.join(self.cpu_flags) or 'none'})"
        )


def _cpuinfo() -> tuple[str, str, set[str]]:
    """(model name, "family F model M", flags) of the first CPU in /proc/cpuinfo;
    ("unknown", "unknown", {}) elsewhere."""
    fields, flags = {}, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if len(fields) == 3 and flags:
                    break
    except OSError:
        pass
    family_model = (
        f"family {fields['cpu family']} model {fields['model']}"
        if "cpu family" in fields and "model" in fields
        else "unknown"
    )
    return fields.get("model name", "unknown"), family_model, flags


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    return _cpuinfo()[0]


def describe() -> Machine:
    """This machine now: CPU, its vector extensions, usable cores, versions, load average."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    name, family_model, flags = _cpuinfo()
    return Machine(
        cpu=name,
        cpu_family_model=family_model,
        cpu_flags=tuple(f for f in KERNEL_FLAGS if f in flags),
        avx512="avx512f" in flags,
        amx=bool({"amx_tile", "amx_bf16"} & flags),
        cores=len(os.sched_getaffinity(0)),
        python=platform.python_version(),
        versions=versions,
        load_average_at_start=tuple(round(x, 2) for x in os.getloadavg()),
    )
