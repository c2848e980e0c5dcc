"""The one way a benchmark runs code in a fresh interpreter with a chosen environment.

TensorFlow reads its oneDNN switch (TF_ENABLE_ONEDNN_OPTS) and fixes its thread pools
once per process, so every configuration we compare runs in its own child process:

    run = run_child("benchmarks.training:measure_unet", {...}, UnetRun, env=TUNED_ENV)
    run.value  # the UnetRun the function returned in the child

imports the module in a new `python`, calls the function with the keyword arguments and
rebuilds its (dataclass) result from JSON; the parent never has to import TensorFlow.
The same call can pin the child to cores, record its peak memory, or stop it once a
condition holds (a command that would otherwise run on, see benchmarks/startup.py).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from benchmarks import paths
from benchmarks import results

# TensorFlow's defaults: it turns its oneDNN kernels on by default only on some CPUs
# (those with AVX-512 VNNI/BF16 or AMX); elsewhere it uses its Eigen kernels. A value of
# None removes the variable.
PLAIN_ENV = {"TF_ENABLE_ONEDNN_OPTS": None}
# What isic-train runs with (see docs/performance.md, "What helped"): oneDNN kernels on.
TUNED_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1"}

_MARKER = "BENCH-RESULT "
_SNIPPET = f"""
import importlib, json, sys
from benchmarks import results
module, function = sys.argv[1].split(":")
value = getattr(importlib.import_module(module), function)(**json.loads(sys.argv[2]))
print({_MARKER!r} + json.dumps(results.to_json(value)), flush=True)
"""
_TREE_SAMPLE_S = 0.02


def command(target: str, kwargs: dict | None = None) -> list[str]:
    """The argv that calls `module:function(**kwargs)` in a new interpreter and prints its
    result: what `run_child` runs, for starting it some other way (e.g. as isic-launch
    workers, benchmarks/gpu.py; read their output with `results_in`)."""
    return [sys.executable, "-c", _SNIPPET, target, json.dumps(kwargs or {})]


def results_in(stdout: str, result_type) -> list:
    """Every result printed in `stdout` by `command`s, in order (lines may carry a prefix
    such as isic-launch's "[w0] ")."""
    found = [line.split(_MARKER, 1)[1] for line in stdout.splitlines() if _MARKER in line]
    return [results.from_json(result_type, json.loads(text)) for text in found]


@dataclasses.dataclass(frozen=True)
class ChildRun:
    """What one child did."""

    value: object  # the function's result (a `result_type`); None if stopped by stop_when
    started_at: float  # time.time() just before the child was spawned
    stderr: str
    max_rss_mb: float  # the largest RSS of the child or of any of its reaped workers
    tree_rss_mb: float | None  # peak summed RSS of the child's process tree (watch_tree)


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


def run_child(
    target: str,
    kwargs: dict | None = None,
    result_type=dict,
    *,
    env: dict | None = None,
    cpus: set[int] | None = None,
    timeout: float = 900,
    watch_tree: bool = False,
    stop_when: Callable[[], bool] | None = None,
) -> ChildRun:
    """Calls `module:function(**kwargs)` in a new interpreter (see the module doc).

    Args:
      target: "module:function"; the function returns JSON-able values or dataclasses.
      kwargs: its keyword arguments (JSON-able).
      result_type: what to rebuild the returned JSON as (a dataclass, or e.g. list[X]).
      env: overrides of this process's environment (see `child_env`).
      cpus: pin the child to these cores first thing, before any import starts a thread
        (threads keep their old affinity; preexec_fn would be unsafe in a parent running TF).
      timeout: seconds before the child is killed and TimeoutError raised.
      watch_tree: also sample the summed RSS of the child and its descendants (costs
        the parent some CPU: only for memory measurements; see _TreeSampler).
      stop_when: polled while the child runs; once true, the child is terminated and
        the run returns with value None.
    Raises:
      RuntimeError: the child failed or printed no result; the message holds its stderr.
      TimeoutError: it ran longer than `timeout`.
    """
    pin = f"import os; os.sched_setaffinity(0, {sorted(cpus)})\n" if cpus else ""
    argv = command(target, kwargs)
    argv[2] = pin + argv[2]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started_at = time.time()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=child_env(env), cwd=paths.PROJECT_ROOT)
        sampler = _TreeSampler(proc.pid) if watch_tree else None
        try:
            stopped, usage = _wait(proc, timeout, stop_when)
        finally:  # also on an error or ^C in the parent: no child is left running
            if proc.returncode is None:
                _end(proc, signal.SIGKILL)
            if sampler:
                sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    found = [line[len(_MARKER) :] for line in stdout.splitlines() if line.startswith(_MARKER)]
    if not stopped and (proc.returncode != 0 or not found):
        raise RuntimeError(
            f"benchmark child {target}({kwargs}) failed with exit code {proc.returncode}:\n{stderr[-3000:]}"
        )
    value = None if stopped else results.from_json(result_type, json.loads(found[-1]))
    # ru_maxrss is in KB on Linux.
    return ChildRun(
        value=value,
        started_at=started_at,
        stderr=stderr,
        max_rss_mb=round(usage.ru_maxrss / 1024, 1),
        tree_rss_mb=round(sampler.peak_kb / 1024, 1) if sampler else None,
    )


def _wait(proc: subprocess.Popen, timeout: float, stop_when) -> tuple[bool, object]:
    """Waits for the child (os.wait4, which also gives its rusage); (stopped, rusage)."""
    deadline = time.monotonic() + timeout
    interval = 0.01 if stop_when else 0.05
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return False, usage
        if stop_when is not None and stop_when():
            return True, _end(proc, signal.SIGTERM)
        if time.monotonic() > deadline:  # run_child kills it
            raise TimeoutError(f"benchmark child {proc.args[3]} ran over {timeout} s")
        time.sleep(interval)


def _end(proc: subprocess.Popen, sig: int):
    """Sends `sig` (then SIGKILL after 30 s), reaps the child, returns its rusage."""
    proc.send_signal(sig)
    deadline = time.monotonic() + 30
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            proc.kill()
            deadline = float("inf")
        time.sleep(0.05)


class _TreeSampler:
    """Tracks the peak of the summed VmRSS of `pid` and its descendants, in a thread.

    A worker being spawned is, between fork() and exec(), a copy-on-write image of its
    parent whose RSS counts all of the parent's pages again: a TensorFlow-importing
    builder (580 MB) caught in that window reads as a 1,160 MB tree. Sampling every
    0.5 ms caught it in 2 of 6 two-worker builds on the AMD machine, and the issue-12
    table's 1,159 MB on the Intel machine is that artifact. A peak therefore counts only
    when two consecutive samples (_TREE_SAMPLE_S apart) both reach it, which no fork
    window lasts; the builds' real peaks last seconds. (PSS would not double-count, but
    it splits shared library pages with unrelated processes, e.g. a training run's
    TensorFlow, so it moves with whatever else runs on the machine.)
    """

    def __init__(self, pid: int):
        self.pid, self.peak_kb = pid, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        previous = 0
        while not self._done.is_set():
            sample = sum(_rss_kb(p) for p in _tree(self.pid))
            self.peak_kb = max(self.peak_kb, min(sample, previous))
            previous = sample
            self._done.wait(_TREE_SAMPLE_S)


def _tree(pid: int) -> set[int]:
    """`pid` and its descendants, from the parent ids in /proc/<pid>/stat."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # Fields after the ')' that ends the command name: state, ppid.
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier and c not in tree]
        tree.update(children)
        frontier = children
    return tree


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN kernels (call after importing TF)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
