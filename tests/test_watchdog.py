"""The stall watchdog (core/watchdog.py) on a simulated clock, and the start-up agreement's
pure parts (launch/training/agreement.py): who differs in what, one precision per group."""

import io
import json
import socket

import pytest

from core import watchdog
from launch.training import agreement
from launch.training.config import TrainConfig


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _dog(clock, peers=()):
    out, exits = io.StringIO(), []
    dog = watchdog.Watchdog(
        60.0,
        name="isic-train worker 1",
        option="--stall_minutes 1",
        peers=peers,
        out=out,
        exit=exits.append,
        clock=clock,
    )
    return dog, out, exits


def test_progress_keeps_it_quiet_a_warning_at_half_the_bound_then_a_report_and_the_exit():
    clock = Clock()
    dog, out, exits = _dog(clock)
    dog.progress("training", 40, "a training call of 8 steps")
    clock.now += 29
    assert not dog.check() and out.getvalue() == ""
    clock.now += 1  # 30 s: half the bound
    assert not dog.check()
    assert "no progress for 30 s in training at step 40: a training call of 8 steps" in out.getvalue()
    dog.progress("validation", 48, "validation steps 1-4 of 4")  # progress: the clock restarts
    clock.now += 59
    assert not dog.check() and not exits
    clock.now += 1
    assert dog.check() and exits == [watchdog.STALL_EXIT_STATUS]
    warning, first, *rest = out.getvalue().splitlines()[1:]  # a warning at 30 s of the new phase
    assert "no progress for 59 s in validation at step 48" in warning
    assert first.startswith(
        "isic-train worker 1 stalled: no progress for 60 s (--stall_minutes 1) in validation at step 48: "
        "validation steps 1-4 of 4. Exiting with status 142"
    )
    # The stacks of this process's threads, with the test's own frame in the main thread.
    assert "--- thread MainThread:" in "\n".join(rest) and "test_watchdog.py" in "\n".join(rest)


def test_the_report_names_a_peer_that_never_started_its_server():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
            peers = [f"127.0.0.1:{listening.getsockname()[1]}", f"127.0.0.1:{closed.getsockname()[1]}"]
            clock = Clock()
            dog, out, _ = _dog(clock, peers)
            clock.now += 60
            dog.check()
    report = out.getvalue()
    assert f"task 0 at {peers[0]}: accepts connections" in report
    assert f"task 1 at {peers[1]}: refuses connections: that worker never started" in report


def test_zero_turns_it_off_and_tf_config_names_the_task():
    assert watchdog.Watchdog(0).__enter__() is not None  # no thread, nothing to fire
    env = {
        "TF_CONFIG": json.dumps(
            {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "task": {"type": "worker", "index": 1}}
        )
    }
    assert watchdog.peers_from_tf_config(env) == (2, ["h:1", "h:2", "h:3"])
    assert watchdog.peers_from_tf_config({}) == (None, [])


def _settings(**changes):
    config = TrainConfig(**changes)
    facts = {"devices": "1 CPU", "gpu_capabilities": [], "gpu_names": [], "cpu_bf16": []}
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
        # CPUs: bfloat16 only if every worker has it (and only once validated on CPUs).
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
