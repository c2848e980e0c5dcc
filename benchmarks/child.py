"""Running one measurement in a fresh interpreter with a chosen environment.

TensorFlow reads its oneDNN switch (TF_ENABLE_ONEDNN_OPTS) and fixes its thread pools
once per process, so every configuration we compare runs in its own child process:
`run_child("benchmarks.training:measure_unet", {...}, env=TUNED_ENV)` imports the module
in a new `python`, calls the function with the keyword arguments and returns the JSON
dict it returned. The parent never has to import TensorFlow.
"""

import json
import os
import subprocess
import sys

from benchmarks import paths

# TF defaults on this machine: TensorFlow turns its oneDNN kernels on by default only on
# CPUs with AVX-512 VNNI/BF16/AMX (Intel Cascade Lake and newer); on AVX2-only CPUs such
# as this AMD EPYC it uses its Eigen kernels. A value of None removes the variable.
PLAIN_ENV = {"TF_ENABLE_ONEDNN_OPTS": None}
# What isic-train runs with (see docs/performance.md, "What helped"): oneDNN kernels on.
TUNED_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1"}

_MARKER = "BENCH-RESULT "
_SNIPPET = f"""
import importlib, json, sys
module, function = sys.argv[1].split(":")
result = getattr(importlib.import_module(module), function)(**json.loads(sys.argv[2]))
print({_MARKER!r} + json.dumps(result), flush=True)
"""


def child_env(overrides: dict | None) -> dict:
    """os.environ with `overrides` applied (None deletes), quiet TF logs, the project importable."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (paths.PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_child(target: str, kwargs: dict, env: dict | None = None, timeout: float = 900,
              cpus: set[int] | None = None) -> dict:
    """Calls `module:function(**kwargs)` in a new interpreter; returns the dict it returned.

    `cpus` pins the child to those cores first thing, before any import starts a thread
    (threads keep their old affinity; preexec_fn would be unsafe in a parent running TF).

    Raises:
      RuntimeError: the child failed or printed no result; the message holds its stderr.
    """
    pin = f"import os; os.sched_setaffinity(0, {sorted(cpus)})\n" if cpus else ""
    proc = subprocess.run([sys.executable, "-c", pin + _SNIPPET, target, json.dumps(kwargs)],
                          capture_output=True, text=True, env=child_env(env), cwd=paths.PROJECT_ROOT,
                          timeout=timeout)
    results = [line[len(_MARKER):] for line in proc.stdout.splitlines() if line.startswith(_MARKER)]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"benchmark child {target}({kwargs}) failed with exit code "
                           f"{proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(results[-1])


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN kernels (call after importing TF)."""
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    return bool(_pywrap_util_port.IsMklEnabled())
