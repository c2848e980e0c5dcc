"""No silent hang: 2 real isic-train workers on 127.0.0.1 that disagree, never start, or are
SIGSTOPped end within a bound, naming who and what. (A worker stuck in a collective its
peer never enters, and the restart after it, are in test_faults_cluster.py: they share its
reference run.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from core import watchdog
from launch.cluster import addresses
from preprocessing import tiny_records
from tests.conftest import PROJECT_ROOT
from tests.conftest import start_launcher
from tests.conftest import trainer_env


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records"))
    tiny_records.write_records(out, {"train": 32, "val": 8}, size=32)
    return out


def _args(records, model_dir, *extra):
    return [
        f"--data_dir={records}",
        f"--model_dir={model_dir}",
        "--base_filters=4",
        "--depth=2",
        "--batch_size=4",
        "--epochs=3",
        "--summary_images=0",
        "--noplots",
        "--nosaved_model",
        "--noaugment",
        "--checkpoint_every_steps=2",
        *extra,
    ]


def _worker(index, workers, args):
    tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
    return subprocess.Popen(
        [sys.executable, "-m", "launch.commands.train", *args, "--strategy=multi_worker"],
        env=trainer_env(TF_CONFIG=tf_config),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_workers_that_disagree_stop_before_training_naming_the_worker_and_the_option(records, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in addresses.find_free_ports(2)]
    model_dir = str(tmp_path / "run")
    procs = [
        _worker(0, workers, _args(records, model_dir, "--precision=float32")),
        _worker(1, workers, _args(records, model_dir, "--precision=mixed_float16", "--learning_rate=0.03")),
    ]
    errs = [p.communicate(timeout=240)[1] for p in procs]
    expected = (
        "isic-train: error: the workers disagree: worker 1 has --learning_rate 0.03, worker 0 0.001; "
        "worker 1 has --precision mixed_float16, worker 0 float32."
    )
    for proc, err in zip(procs, errs):
        assert proc.returncode == 1, err[-3000:]
        assert expected in err and "Traceback" not in err, err[-3000:]
    assert not os.path.exists(os.path.join(model_dir, "checkpoints"))  # nothing trained


def test_a_worker_that_never_starts_is_named_within_the_bound(records, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in addresses.find_free_ports(2)]  # nobody listens on [1]
    proc = _worker(0, workers, _args(records, str(tmp_path / "run"), "--stall_minutes=0.1"))
    start = time.monotonic()
    _, err = proc.communicate(timeout=240)
    print(f"a worker that never starts: its peer exits {time.monotonic() - start:.1f} s after its start")
    assert proc.returncode == -watchdog.STALL_SIGNAL, err[-3000:]  # 142 to a shell
    assert re.search(
        r"isic-train worker 0 stalled: no progress for \d+ s \(--stall_minutes 0\.1\) in set-up: joining "
        rf"the cluster \({workers[0]}, {workers[1]}\)",
        err,
    ), err[-3000:]
    assert f"task 1 at {workers[1]}: refuses connections: that worker never started" in err


def test_a_sigstopped_worker_stops_the_group_within_the_bound_and_is_named(records, tmp_path):
    model_dir = str(tmp_path / "run")
    proc = start_launcher(
        "--num_workers=2",
        "--grace_seconds=5",
        "--",
        *_args(records, model_dir, "--stall_minutes=0.5"),
        env=trainer_env(),
    )
    lines, pids, stopped_at = [], {}, None
    for line in proc.stderr:
        lines.append(line)
        if match := re.match(r"isic-launch: worker (\d) pid (\d+)", line):
            pids[int(match.group(1))] = int(match.group(2))
        if stopped_at is None and os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-2.index")):
            os.kill(pids[1], signal.SIGSTOP)
            stopped_at = time.monotonic()
    proc.wait(timeout=120)
    err = "".join(lines)
    assert stopped_at is not None, err[-3000:]
    seconds = time.monotonic() - stopped_at
    print(f"a SIGSTOPped worker: the group ended {seconds:.1f} s after the SIGSTOP")
    assert proc.returncode != 0 and seconds < 30 + 5 + 15, err[-3000:]  # the bound, the grace, slack
    assert re.search(rf"worker 1 \(pid {pids[1]}\) is stopped \(SIGSTOP/SIGTSTP\): it stalled the group", err)
    # Worker 0 says why it ends (a peer gone, or its own watchdog), not with a traceback.
    assert re.search(r"\[w0\] isic-train: a peer worker is gone|\[w0\] isic-train worker 0 stalled", err), (
        err[-3000:]
    )
