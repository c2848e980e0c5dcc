"""The stall watchdog (core/watchdog.py) on a simulated clock, and the start-up agreement's
pure parts (launch/training/agreement.py): who differs in what, one precision per group."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from core import watchdog
from launch.training import agreement
from launch.training.config import TrainConfig
from tests.conftest import PROJECT_ROOT


def test_a_warning_at_half_the_bound_a_report_at_the_bound_and_progress_restarts_the_clock():
    clock = watchdog.StallClock(60.0, "isic-train worker 1", "--stall_minutes 1", since=100.0)
    clock.progress(100.0, "training", 40, "a training call of 8 steps")
    assert clock.check(129.0) is None
    assert clock.check(130.0) == "warn" and clock.check(131.0) is None  # once
    assert clock.warning(130.0) == (
        "isic-train worker 1: no progress for 30 s in training at step 40: a training call of 8 "
        "steps; the watchdog ends this process at 60 s (--stall_minutes 1)"
    )
    clock.progress(150.0, "validation", 48, "validation steps 1-4 of 4")
    assert clock.check(209.0) != "stall" and clock.check(210.0) == "stall"
    report = clock.report(210.0, ["h:1", "h:2"], probe_fn=lambda address: f"probed {address}")
    assert report.splitlines() == [
        "isic-train worker 1 stalled: no progress for 60 s (--stall_minutes 1) in validation at step 48: "
        "validation steps 1-4 of 4. Ending it with SIGALRM (exit status 142) so the launcher or "
        "scheduler stops (and may restart) the group; a training run's last checkpoint is intact and "
        "the same command resumes from it. Its Python stacks follow.",
        "  task 0 at h:1: probed h:1",
        "  task 1 at h:2: probed h:2",
    ]


def test_probe_tells_a_listening_peer_from_one_that_never_started():
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        assert watchdog.probe(f"127.0.0.1:{listening.getsockname()[1]}") == "accepts connections"
        assert watchdog.probe(f"127.0.0.1:{closed.getsockname()[1]}").startswith(
            "refuses connections: that worker never started"
        )


# Holds the GIL for minutes in one C call (the regular expression engine never releases it),
# as TensorFlow does while it waits for the cluster to form: no Python thread could report.
HOLDS_THE_GIL = textwrap.dedent("""
    import re
    from core import watchdog
    with watchdog.Watchdog(1.5, name="isic-x", option="--stall_minutes 0.025") as dog:
        dog.progress("training", 7, "a call that holds the GIL")
        re.match(r"(a+)+$", "a" * 40 + "b")
""")


def test_the_sidecar_reports_and_ends_a_process_whose_main_thread_holds_the_gil():
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", HOLDS_THE_GIL], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    seconds = time.monotonic() - start
    assert proc.returncode == -watchdog.STALL_SIGNAL, proc.stderr  # 142 to a shell
    assert re.search(
        r"isic-x stalled: no progress for \d s \(--stall_minutes 0.025\) in training at step 7: a call "
        r"that holds the GIL\. Ending it with SIGALRM",
        proc.stderr,
    ), proc.stderr
    assert "isic-x: no progress for 1 s in training at step 7" in proc.stderr  # the warning
    # faulthandler's stacks, written from C while the main thread held the GIL.
    assert "most recent call first" in proc.stderr and 'File "<string>", line 6' in proc.stderr
    assert seconds < 30, seconds


def _children() -> set[str]:
    """The pids of this process's children (/proc/<pid>/task/<tid>/children)."""
    tasks = f"/proc/{os.getpid()}/task"
    found = set()
    for tid in os.listdir(tasks):
        with open(f"{tasks}/{tid}/children") as f:
            found.update(f.read().split())
    return found


def test_zero_turns_it_off_and_tf_config_names_the_task():
    before = _children()  # (a test run before may have left processes of its own)
    with watchdog.Watchdog(0) as dog:
        dog.progress("training", 1)
        assert _children() == before  # no sidecar
    with watchdog.Watchdog(60) as dog:
        assert len(_children() - before) == 1  # the sidecar, which ends with the block
    env = {
        "TF_CONFIG": json.dumps(
            {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "task": {"type": "worker", "index": 1}}
        )
    }
    assert watchdog.peers_from_tf_config(env) == (2, ["h:1", "h:2", "h:3"])
    assert watchdog.peers_from_tf_config({}) == (None, [])


def _settings(**changes):
    config = TrainConfig(**changes)
    facts = {"devices": "1 CPU", "gpu_capabilities": [], "cpu_bf16": []}
    return agreement.settings(config, "/nonexistent", facts, "AUTO (gRPC ring)")


def test_differences_name_the_worker_the_field_and_both_values():
    posted = [
        _settings(precision="mixed_bfloat16"),
        _settings(precision="mixed_bfloat16"),
        _settings(precision="mixed_float16", learning_rate=0.03),
    ]
    assert agreement.differences(posted) == [
        "worker 2 has --learning_rate 0.03, worker 0 0.001",
        "worker 2 has --precision mixed_float16, worker 0 mixed_bfloat16",
    ]
    # What each process may set for itself is not compared.
    per_process = _settings(verify_records="none", stall_minutes=5.0, collective_timeout=60.0)
    assert agreement.differences([_settings(), per_process]) == []
    assert set(agreement.PER_PROCESS) <= set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    "facts, expected, why",
    [
        # An A100 worker and a V100 worker: float16 (the V100 has no bf16 tensor cores).
        (
            [
                {"gpu_capabilities": [[8, 0]] * 2, "cpu_bf16": []},
                {"gpu_capabilities": [[7, 0]] * 2, "cpu_bf16": []},
            ],
            "mixed_float16",
            "capability 7.0",
        ),
        ([{"gpu_capabilities": [[9, 0]], "cpu_bf16": []}] * 2, "mixed_bfloat16", "capability 9.0"),
        # CPUs: bfloat16 only if every worker has it.
        ([{"gpu_capabilities": [], "cpu_bf16": ["amx_bf16", "avx512_bf16"]}] * 2, "mixed_bfloat16", "native"),
        (
            [{"gpu_capabilities": [], "cpu_bf16": ["avx512_bf16"]}, {"gpu_capabilities": [], "cpu_bf16": []}],
            "float32",
            "without native bfloat16",
        ),
    ],
)
def test_auto_precision_is_decided_for_the_whole_group(facts, expected, why):
    chosen, reason = agreement.group_precision("auto", facts)
    assert chosen == expected and why in reason and "over 2 workers" in reason
    assert agreement.group_precision("float32", facts) == ("float32", "--precision")


def test_the_code_digest_changes_with_any_source_file(tmp_path):
    for package in agreement.CODE_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    before = agreement.code_digest(str(tmp_path))
    (tmp_path / "model" / "a.py").write_text("x = 2\n")
    assert agreement.code_digest(str(tmp_path)) != before
