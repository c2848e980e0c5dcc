"""Faults of a multi-worker job under `isic-launch`, on 2 real workers in mixed_float16 with
an overflow injected through the data on one worker (one skip everywhere, steps.py):

* SIGTERM to the launcher makes both workers checkpoint the same step (TensorFlow's
  PreemptionCheckpointHandler) and exit 143, once during training, once during validation;
* then, in the same run, a worker stuck in a collective its peer never enters: the stall
  watchdogs end the group (SIGALRM, 142), the launcher names who and where, restarts it,
  and the run ends bit-identical to the uninterrupted one.

And, with stand-in workers (no TensorFlow): a worker that exits 143 by itself stops the
group without a restart.
"""

import os
import re
import signal
import sys
import textwrap
import threading
import time

import pytest

from preprocessing import tiny_records
from tests.conftest import PROJECT_ROOT
from tests.conftest import start_launcher


def _latest_step(model_dir):
    with open(os.path.join(model_dir, "checkpoints", "checkpoint")) as f:
        return int(re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', f.read(), re.M).group(1))


def _digests(stdout):
    return dict(re.findall(r"^\[w(\d)\] weights sha256 (\w+)$", stdout, re.M))


# Replica 0 of worker 1 overflows at global step 3 (of 16): every run below skips that step.
OVERFLOW = "overflow:worker=1:replica=0:step=3"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """(records, environment, command(model_dir, *launcher_flags)) of the runs below."""
    tmp = tmp_path_factory.mktemp("job")
    records = str(tmp / "records")
    # 8 steps per epoch at batch 8; validation: 16 calls of one step under 2 workers.
    tiny_records.write_records(records, {"train": 64, "val": 128}, size=32)
    scratch = tmp / "scratch"  # the workers' TMPDIR (non-chief temporary checkpoints)
    scratch.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=PROJECT_ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        TMPDIR=str(scratch),
        ISIC_INJECT_FAULT=OVERFLOW,
    )

    def command(model_dir, *launcher_flags):
        return [
            "--num_workers=2",
            "--grace_seconds=60",
            *launcher_flags,
            "--",
            f"--data_dir={records}",
            f"--model_dir={model_dir}",
            "--base_filters=4",
            "--depth=2",
            "--batch_size=8",
            "--precision=mixed_float16",
            "--summary_images=0",
            "--noplots",
            "--nosaved_model",
            "--epochs=2",
            "--checkpoint_every_steps=2",
            "--noaugment",
            "--stall_minutes=0.5",
            "--deterministic",
        ]

    return records, env, command


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """The uninterrupted run's weight digests, per worker."""
    _, env, command = job
    proc = start_launcher(*command(str(tmp_path_factory.mktemp("reference"))), env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert _skips(err) == {"0": "16384", "1": "16384"}, err[-3000:]  # one skip on each worker
    return _digests(out)


def _skips(stderr):
    """{worker: final loss scale} of the workers that report one skipped step."""
    return dict(re.findall(r"^\[w(\d)\] .*loss scale (\d+); 1 step\(s\) skipped$", stderr, re.M))


@pytest.mark.timeout(600)
def test_sigterm_then_a_stall_checkpoint_stop_restart_and_resume_bit_identical(job, reference, tmp_path):
    _, env, command = job
    model_dir = str(tmp_path / "stopped")
    proc = start_launcher(*command(model_dir), env=env)
    first = os.path.join(model_dir, "checkpoints", "ckpt-2.index")
    deadline = time.monotonic() + 240
    while not os.path.exists(first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=120)
    print(f"2 workers: group stopped {time.monotonic() - sent:.2f} s after SIGTERM")
    assert proc.returncode == 143, err[-3000:]
    stops = dict(re.findall(r"^\[w(\d)\] isic-train: stopped by SIGTERM at step (\d+);", err, re.M))
    assert sorted(stops) == ["0", "1"] and stops["0"] == stops["1"], err[-3000:]
    step = int(stops["0"])
    assert 2 <= step < 16 and _latest_step(model_dir) == step
    assert "every worker checkpointed and stopped" in err
    assert not os.path.exists(os.path.join(model_dir, "ISIC-UNet.keras"))
    assert not [n for n in os.listdir(model_dir) if "worker" in n]  # only the chief's files

    # The same command; SIGTERM again, now while the workers validate the epoch in flight:
    # they agree between validation calls, checkpoint its last step and stop.
    end = 8 if step <= 8 else 16
    resumed = start_launcher(*command(model_dir), env=env)
    err = _signal_on_line(resumed, rf"^\[w\d\] .*validating at step {end} ")
    assert resumed.returncode == 143, err[-3000:]
    assert re.search(rf"^\[w1\] .*resuming at step {step} ", err, re.M), err[-3000:]
    stops = dict(re.findall(r"^\[w(\d)\] isic-train: stopped by SIGTERM at step (\d+);", err, re.M))
    assert stops == {"0": str(end), "1": str(end)} and _latest_step(model_dir) == end, err[-3000:]

    # The same command, which validates that epoch again: now worker 1 gets stuck after its
    # first call, in a collective its peer never enters. The watchdogs end the group, the
    # launcher names who and where and relaunches it, and the run ends bit-identical.
    once = str(tmp_path / "fault-injected")  # the relaunched group runs without the fault
    stall = f"{OVERFLOW};stall_collective:worker=1:step={end}:once={once}"
    # The peer's watchdog may fire first (its clock started before the call that traced the
    # validation step); the grace lets worker 1's own watchdog report before any SIGKILL.
    resumed = start_launcher(*command(model_dir, "--restarts=1"), env=dict(env, ISIC_INJECT_FAULT=stall))
    err, seconds = _stall_and_restart(resumed)
    out = resumed.stdout.read()
    resumed.wait(timeout=60)
    assert resumed.returncode == 0, err[-3000:]
    print(f"a worker stuck in a collective: the group stopped {seconds:.1f} s after the stall")
    assert seconds < 30 + 15, err[-3000:]  # --stall_minutes 0.5, slack for a loaded machine
    assert re.search(r"isic-launch: worker \d died \(signal SIGALRM: its stall watchdog ended", err)
    assert re.search(r"isic-launch: stall report of worker \d: isic-train worker \d stalled: no", err)
    # Worker 1 names the injected wait itself, unless its peer's watchdog fired first (its
    # clock started before the call in flight): the peer, the coordination service's leader,
    # then exits and worker 1's collective is aborted ("a peer worker is gone").
    own = re.search(
        r"\[w1\] isic-train worker 1 stalled: no progress for \d+ s \(--stall_minutes 0.5\) in fault at "
        rf"step {end}: an all-reduce its peers never enter \(injected fault\)",
        err,
    )
    assert own or re.search(r"\[w1\] isic-train: a peer worker is gone at step", err), err[-3000:]
    assert "isic-launch: restart 1 of 1" in err
    assert len(re.findall(rf"^\[w1\] .*resuming at step {end} ", err, re.M)) == 2, err[-3000:]
    assert f"epoch {end // 8} ended at step {end} without its history row: validating it" in err
    digests = _digests(out)
    assert len(set(digests.values())) == 1 and digests == reference
    assert _skips(err) == {"0": "16384", "1": "16384"}, err[-3000:]


def _stall_and_restart(proc) -> tuple[str, float]:
    """(stderr, seconds from the injected stall to the group's stop) of a launcher run."""
    lines, stalled_at, stopped_at = [], None, None
    for line in proc.stderr:
        lines.append(line)
        if stalled_at is None and "injected fault: an all-reduce its peers never enter" in line:
            stalled_at = time.monotonic()
        if stopped_at is None and re.search(r"isic-launch: group stopped .* after worker \d died", line):
            stopped_at = time.monotonic()
    assert stalled_at and stopped_at, "".join(lines)[-3000:]
    return "".join(lines), stopped_at - stalled_at


def _signal_on_line(proc, pattern, timeout=240):
    """Sends SIGTERM to `proc` when its stderr shows a line matching `pattern`; returns
    all of stderr once it has exited."""
    lines, seen = [], threading.Event()

    def pump():
        for line in proc.stderr:
            lines.append(line)
            if re.search(pattern, line):
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    assert seen.wait(timeout) or proc.poll() is not None, "".join(lines)[-3000:]
    assert proc.poll() is None, "".join(lines)[-3000:]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    proc.wait(timeout=120)
    reader.join(timeout=30)
    print(f"2 workers, SIGTERM during validation: group stopped {time.monotonic() - sent:.2f} s later")
    return "".join(lines)


# Worker 0 got SIGTERM from the scheduler and exits 143 after the checkpoint; worker 1
# (told by the coordination service) exits 143 a moment later. Any signal from the
# launcher would make worker 1 exit 1 instead.
STOPS_BY_ITSELF = textwrap.dedent("""
    import json, os, signal, sys, time
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    time.sleep(0.5 + index)
    sys.exit(143)  # as isic-train does after checkpointing on SIGTERM
""")


def test_a_worker_stopped_by_a_signal_stops_the_group_without_a_restart(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(STOPS_BY_ITSELF)
    proc = start_launcher(
        "--num_workers=2", "--restarts=2", "--grace_seconds=5", "--", sys.executable, str(script)
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "worker 0 stopped on SIGTERM after checkpointing: waiting up to 5 s for the others" in err
    assert "every worker checkpointed and stopped" in err and "restart" not in err
