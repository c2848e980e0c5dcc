"""`isic-launch`: the process group with stand-in workers, and once with the real trainer.

Stand-in workers are tiny Python scripts (no TensorFlow), so these tests check the
launcher's own behaviour quickly: output prefixes, each worker's TF_CONFIG, stopping the
group when one worker dies, forwarding signals, relaunching. The real-trainer
test runs 2 `isic-train` workers under the launcher, SIGKILLs one mid-epoch, and checks
that the group stops within a bounded time and the relaunch resumes at the last checkpoint.
"""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from absl import app

from core.errors import UserError
from launch.cluster import addresses
from launch.cluster import process_group
from launch.cluster import worker_output
from launch.cluster.config import LaunchConfig
from launch.commands import launch as cluster
from tests.conftest import PROJECT_ROOT
from tests.conftest import start_launcher
from tests.test_slurm import SBATCH_SHELL
from tests.test_slurm import srun_task

# A stand-in worker. Its behaviour comes from argv: MODE [ARG]. It prints its TF_CONFIG on
# stdout and a line on stderr, then:
#   done            - exits 0
#   wait            - prints "ready", waits for a signal, reports it, exits 0
#   stubborn DIR    - worker 0 ignores SIGTERM (only SIGKILL ends it), the others but 1
#                     wait for a signal; worker 1 exits 3 once all have said so in DIR
#   fail_once FILE  - worker 1 fails (exit 1) while FILE does not exist, creating it;
#                     otherwise everybody exits 0
#   always_fail FILE - appends its TF_CONFIG to FILE; worker 1 exits 5, others wait
STAND_IN = textwrap.dedent("""
    import json, os, signal, sys, time
    config = json.loads(os.environ["TF_CONFIG"])
    index = config["task"]["index"]
    mode = sys.argv[1]
    print("tf_config " + os.environ["TF_CONFIG"])
    print("to stderr", file=sys.stderr)

    def report(signum, frame):
        print("got signal %d" % signum)
        sys.exit(0)

    def wait_for_signal(ignore_term=False):
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore_term else report)
        signal.signal(signal.SIGINT, report)
        print("ready")
        while True:
            time.sleep(0.05)

    if mode == "done":
        sys.exit(0)
    elif mode == "wait":
        wait_for_signal()
    elif mode == "stubborn":
        if index == 1:  # dies once the others have installed their signal handlers
            while len(os.listdir(sys.argv[2])) < len(config["cluster"]["worker"]) - 1:
                time.sleep(0.01)
            sys.exit(3)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if index == 0 else report)
        open(os.path.join(sys.argv[2], str(index)), "w").close()
        wait_for_signal(ignore_term=(index == 0))
    elif mode == "fail_once":
        if index == 1 and not os.path.exists(sys.argv[2]):
            open(sys.argv[2], "w").close()
            sys.exit(1)
        if index == 1:
            sys.exit(0)
        time.sleep(0.5)  # worker 0 outlives worker 1's failure on the first attempt
    elif mode == "always_fail":
        with open(sys.argv[2], "a") as f:
            f.write(os.environ["TF_CONFIG"] + "\\n")
        if index == 1:
            sys.exit(5)
        wait_for_signal()
""")


@pytest.fixture
def stand_in(tmp_path):
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return lambda *args: [sys.executable, str(path), *map(str, args)]


def _launch(command, num_workers, **options):
    """Runs the group in-process with LaunchConfig(num_workers, **options); returns
    (exit code, stdout text, stderr text, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    code = process_group.launch(command, LaunchConfig(num_workers=num_workers, **options), out=out, err=err)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - t0


def _configs(stdout: str) -> dict:
    """{worker index: TF_CONFIG dict} from the "[wI] tf_config {...}" lines."""
    found = {}
    for match in re.finditer(r"^\[w(\d+)\] tf_config (.*)$", stdout, re.M):
        found[int(match.group(1))] = json.loads(match.group(2))
    return found


def test_each_worker_gets_its_tf_config_and_prefixed_output(stand_in):
    code, out, err, _ = _launch(stand_in("done"), 3)
    assert code == 0, err
    configs = _configs(out)
    assert sorted(configs) == [0, 1, 2]
    cluster_spec = configs[0]["cluster"]
    assert list(cluster_spec) == ["worker"] and len(set(cluster_spec["worker"])) == 3
    for index, config in configs.items():
        assert config["cluster"] == cluster_spec
        assert config["task"] == {"type": "worker", "index": index}
    for address in cluster_spec["worker"]:
        host, port = address.split(":")
        assert host == "127.0.0.1" and 0 < int(port) < 65536
    assert sorted(re.findall(r"^\[w(\d)\] to stderr$", err, re.M)) == ["0", "1", "2"]
    assert "isic-launch: all workers finished" in err


def test_ports_start_at_port_and_skip_busy_ones():
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    start = busy.getsockname()[1]
    try:
        ports = addresses.find_free_ports(3, start, exclude={start + 1})
    finally:
        busy.close()
    assert len(set(ports)) == 3 and min(ports) > start + 1
    assert all(p >= start for p in ports)
    assert len(set(addresses.find_free_ports(4))) == 4


def test_worker_env_slices_gpus_and_hides_an_enclosing_slurm_job():
    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    env = addresses.worker_env(
        {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, workers, 1, "2,3"
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "SLURM_PROCID" not in env  # nor can TensorFlow's SLURM code take it for task 0
    assert json.loads(env["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}
    untouched = addresses.worker_env({"CUDA_VISIBLE_DEVICES": "0,1"}, workers, 1)
    assert untouched["CUDA_VISIBLE_DEVICES"] == "0,1" and "TF_FORCE_GPU_ALLOW_GROWTH" not in untouched


def test_each_worker_gets_its_own_gpus_with_memory_growth():
    # The launcher's CUDA_VISIBLE_DEVICES stands for the machine's GPUs (no GPU needed).
    show = [
        sys.executable,
        "-c",
        "import os; print('gpus', os.environ['CUDA_VISIBLE_DEVICES'], "
        "os.environ['TF_FORCE_GPU_ALLOW_GROWTH'])",
    ]
    out, err = io.StringIO(), io.StringIO()
    code = process_group.launch(
        show,
        LaunchConfig(num_workers=2),
        out=out,
        err=err,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="4,5,6,7"),
    )
    assert code == 0, err.getvalue()
    assert sorted(re.findall(r"^\[w\d\] gpus .*$", out.getvalue(), re.M)) == [
        "[w0] gpus 4,5 true",
        "[w1] gpus 6,7 true",
    ]
    assert "isic-launch: GPUs: worker 0: 4,5; worker 1: 6,7" in err.getvalue()
    with pytest.raises(UserError, match="--num_workers 2 or fewer"):
        process_group.launch(
            show,
            LaunchConfig(num_workers=3),
            out=out,
            err=err,
            env=dict(os.environ, CUDA_VISIBLE_DEVICES="0,1"),
        )


@pytest.mark.parametrize("where", ["batch script shell", "srun task"])
def test_isic_launch_never_narrows_its_own_gpus_under_slurm(where):
    # In an sbatch shell of 4 tasks per node (or as one task of a step) on a node of 8 GPUs,
    # the launcher splits all 8 among its workers: narrowing is isic-train's alone
    # (launch/cli.py). Its one worker here sees what the launcher saw.
    slurm = SBATCH_SHELL if where == "batch script shell" else srun_task(1)
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, **slurm)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.commands.launch",
            "--num_workers=1",
            "--",
            sys.executable,
            "-c",
            "import os; print('gpus', os.environ['CUDA_VISIBLE_DEVICES'])",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "[w0] gpus 0,1,2,3,4,5,6,7" in done.stdout


def test_a_dead_worker_stops_the_group_within_the_grace_period(stand_in, tmp_path):
    # Worker 1 exits 3; worker 0 ignores SIGTERM (as a process stuck in native code may),
    # worker 2 exits on it. With grace 1 s the group must end about 1 s after the death.
    (tmp_path / "ready").mkdir()
    code, out, err, seconds = _launch(stand_in("stubborn", tmp_path / "ready"), 3, grace_seconds=1.0)
    assert code == 3, err
    assert "worker 1 died (exit code 3)" in err
    assert "[w2] got signal 15" in out and "[w0] got signal" not in out
    assert "worker(s) [0] still running after" in err and "SIGKILL" in err
    stopped = float(re.search(r"group stopped ([\d.]+) s after worker 1 died", err).group(1))
    assert 1.0 <= stopped < 2.0
    assert seconds < 5.0


def test_exit_code_of_a_worker_killed_by_a_signal(stand_in):
    result = process_group.GroupResult([-9, -15], failed=0)
    assert result.exit_code() == 137 and not result.ok
    assert worker_output.describe_exit(-9) == "signal SIGKILL"
    assert worker_output.describe_exit(2) == "exit code 2"


def test_restarts_relaunch_the_group_on_fresh_ports(stand_in, tmp_path):
    marker = tmp_path / "failed_once"
    code, out, err, _ = _launch(stand_in("fail_once", marker), 2, restarts=2, grace_seconds=1.0)
    assert code == 0, err
    assert "worker 1 died (exit code 1)" in err and "restart 1 of 2" in err
    assert "restart 2 of 2" not in err
    # Two attempts, with disjoint ports (from the launcher's own lines: under load a worker
    # may be stopped before it prints anything).
    attempts = [
        set(m.split(", "))
        for m in re.findall(r"^isic-launch: (?:2 worker\(s\)|restart \d of \d) on (.*)$", err, re.M)
    ]
    assert len(attempts) == 2 and len(attempts[0]) == 2 and not attempts[0] & attempts[1]
    assert set(_configs(out)[1]["cluster"]["worker"]) == attempts[1]  # the last one succeeded


def test_restarts_give_up_after_k_relaunches(stand_in, tmp_path):
    log = tmp_path / "attempts"
    code, out, err, _ = _launch(stand_in("always_fail", log), 2, restarts=2, grace_seconds=1.0, port=30000)
    assert code == 5, err
    configs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["task"]["index"] for c in configs].count(1) == 3  # 3 attempts
    addresses = re.findall(r"^isic-launch: (?:2 worker\(s\)|restart \d of 2) on (.*)$", err, re.M)
    ports = [int(a.split(":")[1]) for line in addresses for a in line.split(", ")]
    assert len(ports) == len(set(ports)) == 6 and min(ports) >= 30000
    assert "giving up after 2 restart(s): exit code 5" in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_to_the_launcher_reach_every_worker(stand_in, signum):
    proc = start_launcher("--num_workers=2", "--grace_seconds=5", "--", *stand_in("wait"))
    ready, lines = set(), []
    for line in proc.stdout:  # both workers are up and have installed their handlers
        lines.append(line)
        if line.endswith("] ready\n"):
            ready.add(line[:4])
            if len(ready) == 2:
                break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    out = "".join(lines) + out
    assert proc.returncode == 128 + signum, err
    assert f"[w0] got signal {int(signum)}" in out and f"[w1] got signal {int(signum)}" in out
    assert f"got {signum.name}: forwarding it to all workers" in err


def test_launch_config_rejects_bad_values():
    assert LaunchConfig().num_workers == 2 and LaunchConfig().grace_seconds == 30.0
    for bad, message in (
        ({"num_workers": 0}, "--num_workers must be >= 1"),
        ({"port": 70000}, "--port must be in 1..65535"),
        ({"port": 0}, "--port must be >= 1"),
        ({"restarts": -1}, "--restarts"),
        ({"grace_seconds": -1.0}, "--grace_seconds"),
        ({"gpus_per_worker": -1}, "--gpus_per_worker"),
    ):
        with pytest.raises(UserError, match=message):
            LaunchConfig(**bad)


def test_the_command_passes_what_follows_the_double_dash_to_the_workers(tmp_path):
    # Run from another folder: the workers must still find the project (PYTHONPATH first).
    code = "import os; print('pythonpath', os.environ['PYTHONPATH'].split(os.pathsep)[0])"
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "launch.commands.launch", "--num_workers=1", "--", sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"[w0] pythonpath {PROJECT_ROOT}\n" in done.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "launch.commands.launch", "--port=70000", "--", "--data_dir=x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "--port must be in 1..65535" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_worker_command_adds_multi_worker_and_rejects_other_strategies():
    command = cluster.worker_command(["--data_dir=r", "--model_dir", "m"])
    assert command[:3] == [sys.executable, "-m", "launch.commands.train"]
    assert command[3:] == ["--data_dir=r", "--model_dir", "m", "--strategy=multi_worker"]
    assert cluster.worker_command(["python", "x.py", "--a"]) == ["python", "x.py", "--a"]
    assert cluster.worker_command(["--strategy=multi_worker"])[-1] == "--strategy=multi_worker"
    for bad in (["--strategy=mirrored"], ["--strategy", "one_device"], []):
        with pytest.raises(app.UsageError):
            cluster.worker_command(bad)


# --- The real trainer: 2 workers under the launcher, one SIGKILLed mid-epoch.


class _Lines:
    """Reads a stream in a thread; `wait_for(pattern)` returns the first matching line's match."""

    def __init__(self, stream):
        self.lines, self.cond = [], threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append((time.monotonic(), line))
                self.cond.notify_all()

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for stamp, line in self.lines:
                    match = re.search(pattern, line)
                    if match:
                        return stamp, match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s")
                self.cond.wait(remaining)

    def text(self):
        with self.cond:
            return "".join(line for _, line in self.lines)


def _latest_step(model_dir):
    import tensorflow as tf  # only this test needs it

    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else None


@pytest.mark.timeout(600)
def test_real_trainer_killed_worker_stops_the_group_within_the_grace(tmp_path):
    """A real MultiWorkerMirroredStrategy worker SIGKILLed mid-epoch: the survivor, which
    ignores SIGTERM (below), is stopped within the grace period, and only checkpoints and
    no worker's temporary files are left. The relaunch after such a death and the
    bit-identical resume: tests/test_faults_cluster.py (a watchdog's SIGALRM there, the same
    launcher path)."""
    from preprocessing import tiny_records

    records, model_dir = str(tmp_path / "records"), str(tmp_path / "model")
    scratch = tmp_path / "scratch"  # the workers' TMPDIR: non-chief checkpoints go there
    scratch.mkdir()
    # 64 training images, global batch 8 (4 per worker): one epoch of 8 steps. No
    # validation: each traced function costs seconds per worker.
    tiny_records.write_records(records, {"train": 64}, size=32)
    # MWMS workers ignore SIGTERM (TF's preemption notifier catches it), so the survivor
    # is ended by the SIGKILL after the grace period. No --collective_timeout (the
    # default): the group must stop without one.
    grace = 2.0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.commands.launch",
            "--num_workers=2",
            f"--grace_seconds={grace}",
            "--",
            f"--data_dir={records}",
            f"--model_dir={model_dir}",
            "--base_filters=4",
            "--depth=2",
            "--batch_size=8",
            "--precision=float32",
            "--summary_images=0",
            "--noplots",
            "--nosaved_model",
            "--epochs=1",
            "--checkpoint_every_steps=2",
            "--noaugment",
            "--sync_batch_norm",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(
            os.environ,
            PYTHONPATH=PROJECT_ROOT,
            TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
            TMPDIR=str(scratch),
        ),
    )
    _stdout, err = _Lines(proc.stdout), _Lines(proc.stderr)  # both drained: no worker blocks on a pipe
    try:
        _, pid = err.wait_for(r"isic-launch: worker 1 pid (\d+)", 60)
        # Kill worker 1 once the chief has written its first mid-epoch checkpoint.
        first = os.path.join(model_dir, "checkpoints", "ckpt-2.index")
        deadline = time.monotonic() + 300
        while not os.path.exists(first) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.exists(first) and proc.poll() is None, err.text()[-4000:]
        os.kill(int(pid.group(1)), signal.SIGKILL)
        killed_at = time.monotonic()
        stopped_at, stopped = err.wait_for(r"group stopped ([\d.]+) s after worker 1 died", 60)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = err.text()
    print(
        f"worker death to group stopped: {stopped_at - killed_at:.2f} s "
        f"(launcher's own measure {stopped.group(1)} s)"
    )
    assert proc.returncode == 137, stderr[-4000:]  # the dead worker's status (no --restarts)
    assert "worker 1 died (signal SIGKILL)" in stderr and "no --restarts left" in stderr
    assert stopped_at - killed_at < grace + 2.0
    assert 2 <= _latest_step(model_dir) < 8  # the run stopped mid-epoch, its checkpoints kept
    # Only the chief writes into the model directory; the other worker's temporary
    # checkpoints live under its TMPDIR (one it was writing when killed may be left there).
    listing = set(os.listdir(model_dir))
    assert not [n for n in listing if "worker" in n or "tmp" in n or n.startswith("isic-ckpt-")], sorted(
        listing
    )
