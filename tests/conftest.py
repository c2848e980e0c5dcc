"""Shared pytest setup: quiet TensorFlow logs, paths to optional real data, the launcher."""

import os
import resource
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real ISIC sample, never committed; tests that need it skip when it is absent.
ISIC_SAMPLE = os.path.join(PROJECT_ROOT, "..", "shared", "isic2017-sample")


def trainer_env(**extra) -> dict:
    """The environment of an isic-train child: this one's, quiet, no GPU, no TF_CONFIG
    (unless given), the project importable; `extra` set on top."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=PROJECT_ROOT)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def start_launcher(*args, env=None) -> subprocess.Popen:
    """`isic-launch *args` in a child with text pipes (env: this one's + PYTHONPATH)."""
    return subprocess.Popen(
        [sys.executable, "-m", "launch.commands.launch", *args],
        cwd=PROJECT_ROOT,
        env=env or dict(os.environ, PYTHONPATH=PROJECT_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# The files that take longest, longest first (seconds of test time on a fresh clone, AMD
# EPYC family 25, the per-file totals `make test` prints: 120, 108, 86, 76, 71, 62, 50, 38).
# `make test` runs the files on 2 workers in the order collected (`--dist loadfile
# --no-loadscope-reorder`); xdist's default order (most tests first) left these few-test,
# many-process files for the end, and one worker ran them alone for ~50 s. Longest first
# lets the short files fill in. Keep it to the measured heavy few; any other file runs
# after them in its usual order.
LONGEST_FIRST = (
    "test_faults_cluster.py",
    "test_faults.py",
    "test_export.py",
    "test_trainer.py",
    "test_stalls_cluster.py",
    "test_bench.py",
    "test_trainer_distributed.py",
    "test_chaos.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))  # stable


# `make test` prints where the time went: besides --durations' slowest tests, each file's
# total (setup, call and teardown of its tests), largest first, in wall-clock seconds and in
# CPU seconds (the test process and every child it waited for: isic-train, the launcher
# and its workers). With 2 workers on 2 cores the suite's length is about its CPU seconds / 2,
# so the CPU column says what a cut would save; a file with much more wall than CPU time
# mostly waits (timeouts, watchdogs). Collected in the controlling process (with xdist,
# the reports of every worker arrive there, each carrying its CPU seconds).
FILE_SECONDS: dict = {}
FILE_CPU_SECONDS: dict = {}
FILES_SHOWN = 12
CPU_START = pytest.StashKey[float]()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    item.stash[CPU_START] = _cpu_seconds()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    now = _cpu_seconds()
    report.user_properties.append(("cpu_s", now - item.stash.get(CPU_START, now)))
    item.stash[CPU_START] = now  # the next phase (setup, call, teardown) starts here


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    FILE_SECONDS[path] = FILE_SECONDS.get(path, 0.0) + report.duration
    FILE_CPU_SECONDS[path] = FILE_CPU_SECONDS.get(path, 0.0) + dict(report.user_properties).get("cpu_s", 0.0)


def pytest_terminal_summary(terminalreporter):
    if not FILE_SECONDS:
        return
    total, cpu = sum(FILE_SECONDS.values()), sum(FILE_CPU_SECONDS.values())
    terminalreporter.section(
        f"test time per file: {total:.0f} s in all ({cpu:.0f} CPU s), the {FILES_SHOWN} largest"
    )
    terminalreporter.write_line("   wall      CPU")
    for path, seconds in sorted(FILE_SECONDS.items(), key=lambda kv: -kv[1])[:FILES_SHOWN]:
        terminalreporter.write_line(f"{seconds:7.1f} s {FILE_CPU_SECONDS.get(path, 0.0):7.1f} s  {path}")
