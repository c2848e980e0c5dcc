"""Shared pytest setup: quiet TensorFlow logs, paths to optional real data, the launcher."""

import os
import subprocess
import sys

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
# total (setup, call and teardown of its tests), largest first. Collected in the controlling
# process (with xdist, the reports of every worker arrive there).
FILE_SECONDS: dict = {}
FILES_SHOWN = 12


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    FILE_SECONDS[path] = FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not FILE_SECONDS:
        return
    total = sum(FILE_SECONDS.values())
    terminalreporter.section(f"test time per file: {total:.0f} s in all, the {FILES_SHOWN} largest")
    for path, seconds in sorted(FILE_SECONDS.items(), key=lambda kv: -kv[1])[:FILES_SHOWN]:
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}")
