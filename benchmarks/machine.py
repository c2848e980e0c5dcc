"""What the figures were measured on: CPU model, cores, load and library versions."""

import os
import platform
from importlib import metadata


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def describe() -> dict:
    """CPU model, usable cores, Python and library versions, and the current load average."""
    versions = {}
    for package in ("tensorflow", "keras", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "versions": versions,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
