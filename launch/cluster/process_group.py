"""Running N local worker processes as one group: TF_CONFIG, prefixed output, stop, restart.

This is the engine of `isic-launch` (launch/commands/launch.py), kept free of flags and of
TensorFlow so tests can drive it with stand-in worker commands.

The group's contract:
  * worker i gets TF_CONFIG {"cluster": {"worker": [127.0.0.1:p0, ...]}, "task":
    {"type": "worker", "index": i}}; worker 0 is the chief (launch/distribute.is_chief);
  * on a machine with GPUs, worker i sees only its own disjoint share of them, with GPU
    memory growth on (launch/cluster/gpus.py);
  * every line a worker prints is copied to the launcher's stdout/stderr as "[wi] line";
  * when a worker dies (non-zero exit or signal) the others get SIGTERM and, after
    `grace_seconds`, SIGKILL, so the group ends within about `grace_seconds` + POLL_S of
    the death even if the survivors are blocked in a collective. (isic-train workers
    answer SIGTERM by checkpointing with their peers, which a dead peer prevents; they
    also fail by themselves once the coordination service misses its heartbeats, and
    --collective_timeout bounds that too; a launcher must not rely on it.)
  * SIGINT/SIGTERM sent to the launcher are forwarded to every worker, which then
    checkpoint together and exit 130/143 (launch/training/preemption.py); the launcher
    waits up to `grace_seconds` for that, then SIGKILLs (a second Ctrl-C kills at once);
  * a worker that exits 143 or 130 by itself (the scheduler signalled it directly) has
    checkpointed on a signal with its peers, which exit too: the launcher waits up to
    `grace_seconds` for them (then SIGKILL), and the group is not restarted;
  * `launch` relaunches the whole group after a failure, up to `restarts` times, on fresh
    ports. Resuming is the trainer's job: it continues from --model_dir's last checkpoint.

Each worker runs in its own session (process group) so that a Ctrl-C typed in the terminal
reaches the launcher only, and the launcher alone decides how workers stop. If the launcher
itself is SIGKILLed, its workers die at their next write to the closed output pipe, and
the others follow when they miss that worker.
"""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from core import watchdog
from launch.cluster import gpus as gpus_lib
from launch.cluster import worker_output
from launch.cluster.addresses import LOCALHOST
from launch.cluster.addresses import LaunchError
from launch.cluster.addresses import find_free_ports
from launch.cluster.addresses import worker_env
from launch.cluster.config import LaunchConfig

# Exit statuses of an isic-train that stopped on SIGTERM / SIGINT after checkpointing.
STOPPED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)
POLL_S = 0.05  # how often the launcher checks its workers: adds at most this to every bound
KILL_WAIT_S = 5.0  # a SIGKILLed process is gone in milliseconds; longer means it is stuck in the kernel


@dataclass
class GroupResult:
    """How a group ended.

    returncodes: per worker, as subprocess reports them (negative = killed by that signal).
    failed: index of the first worker seen to fail, or None.
    interrupted: the signal the launcher received and forwarded (or that a worker stopped
      on by itself, exiting 128 + it after checkpointing), or None.
    stop_seconds: seconds from noticing the failure or signal to the last worker's exit.
    """

    returncodes: list[int]
    failed: int | None = None
    interrupted: int | None = None
    stop_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.failed is None and self.interrupted is None and not any(self.returncodes)

    def exit_code(self) -> int:
        """0, the failed worker's exit code, or 128 + signal (shell convention)."""
        if self.interrupted is not None:
            return 128 + self.interrupted
        if self.failed is None:
            return 0
        code = self.returncodes[self.failed]
        return code if code > 0 else 128 + (-code)


class Interrupts:
    """Signals received by the launcher, in order; usable as a signal handler.

    The handler only records (it runs between two bytecodes of the main thread); the
    group's wait loop reads the list and forwards the signal to its workers.
    """

    def __init__(self):
        self.received: list[int] = []

    def __call__(self, signum, frame=None):
        self.received.append(signum)


class WorkerGroup:
    """N worker processes started together and stopped together.

    Args:
      commands: one argv list per worker.
      envs: one environment dict per worker (see `worker_env`).
      out, err: text streams receiving the workers' prefixed stdout and stderr lines.
      grace_seconds: seconds between SIGTERM (or the forwarded signal) and SIGKILL.
      interrupts: where signals to the launcher are recorded (shared across restarts).
      cwd: the workers' working directory.
      log: called with the launcher's own messages (default: written to `err`).
    """

    def __init__(
        self,
        commands: list[list[str]],
        envs: list[dict],
        *,
        out,
        err,
        grace_seconds: float = 30.0,
        interrupts: Interrupts | None = None,
        cwd: str | None = None,
        log=None,
    ):
        if len(commands) != len(envs) or not commands:
            raise ValueError(
                f"need one environment per command, got {len(commands)} commands and {len(envs)} environments"
            )
        self.commands, self.envs, self.cwd, self.grace_seconds = commands, envs, cwd, grace_seconds
        self.interrupts = interrupts or Interrupts()
        lock = threading.Lock()  # one lock for both streams keeps [w0]/[w1] lines whole
        self.out, self.err = worker_output.Output(out, lock), worker_output.Output(err, lock)
        self.log = log or (lambda message: self.err.write_line(f"isic-launch: {message}"))
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        # Each worker's stall report (its first line), for the launcher's own message.
        self.stall_reports: dict[int, str] = {}
        # Signals from now on concern this group, including those arriving during start().
        self.signals_before = len(self.interrupts.received)

    def start(self) -> None:
        """Starts every worker; if one cannot be started, stops those already running."""
        for index, (command, env) in enumerate(zip(self.commands, self.envs)):
            try:
                proc = subprocess.Popen(
                    command,
                    env=env,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as e:
                self._stop(signal.SIGKILL, 0.0)
                raise LaunchError(f"cannot start worker {index}: {command[0]}: {e}") from e
            self.procs.append(proc)
            prefix = f"[w{index}] "

            def seen(line, index=index):
                if watchdog.STALL_MARK in line:
                    self.stall_reports.setdefault(index, line.strip())

            self.threads += [self.out.pump(proc.stdout, prefix), self.err.pump(proc.stderr, prefix, seen)]
            self.log(f"worker {index} pid {proc.pid}: {shlex.join(command)}")

    def wait(self) -> GroupResult:
        """Waits until all workers succeed, one fails, or the launcher gets a signal."""
        while True:
            if len(self.interrupts.received) > self.signals_before:
                signum = self.interrupts.received[self.signals_before]
                name = signal.Signals(signum).name
                self.log(f"got {name}: forwarding it to all workers")
                seconds = self._stop(signum, self.grace_seconds)
                self.log(f"group stopped {seconds:.2f} s after {name}")
                self._log_stopped()
                return self._result(interrupted=signum, stop_seconds=seconds)
            codes = [p.poll() for p in self.procs]
            failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None and codes[failed] in STOPPED_CODES:
                # Its peers checkpointed the same step and are exiting too: a signal now
                # could only cut their exit short.
                signum = codes[failed] - 128
                self.log(
                    f"worker {failed} stopped on {signal.Signals(signum).name} after "
                    f"checkpointing: waiting up to {self.grace_seconds:g} s for the others"
                )
                seconds = self._stop(None, self.grace_seconds)
                self._log_stopped()
                return self._result(interrupted=signum, stop_seconds=seconds)
            if failed is not None:
                how = worker_output.describe_exit(codes[failed])
                self.log(f"worker {failed} died ({how}): stopping the others")
                self._log_stalls(failed)
                seconds = self._stop(signal.SIGTERM, self.grace_seconds)
                self.log(f"group stopped {seconds:.2f} s after worker {failed} died")
                return self._result(failed=failed, stop_seconds=seconds)
            if all(c == 0 for c in codes):
                self._join_output()
                return self._result()
            time.sleep(POLL_S)

    def _log_stalls(self, failed: int) -> None:
        """Names who stalled: workers stopped by a signal (SIGSTOP: state T, they cannot
        report) and the stall report of the failed worker, if it had one."""
        time.sleep(2 * POLL_S)  # let the pumps copy the report's first line
        for index, proc in enumerate(self.procs):
            if proc.poll() is None and worker_output.process_state(proc.pid) == "T":
                self.log(
                    f"worker {index} (pid {proc.pid}) is stopped (SIGSTOP/SIGTSTP): it stalled "
                    "the group; it is sent SIGCONT with the stop signal"
                )
        if failed in self.stall_reports:
            self.log(f"stall report of worker {failed}: {self.stall_reports[failed]}")

    def _log_stopped(self) -> None:
        """Says whether every worker checkpointed (exit 130/143) before it stopped."""
        codes = [p.returncode for p in self.procs]
        if all(c in STOPPED_CODES for c in codes):
            self.log("every worker checkpointed and stopped; run the same command to resume")
        else:
            self.log(
                "exit codes "
                + ", ".join(f"worker {i}: {worker_output.describe_exit(c)}" for i, c in enumerate(codes))
                + "; the job resumes from its last complete checkpoint"
            )

    def _result(self, **kwargs) -> GroupResult:
        return GroupResult([p.returncode for p in self.procs], **kwargs)

    def _send(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    # The worker's whole session: also reaches anything it started. A
                    # stopped (SIGSTOP) worker acts on the signal only once continued.
                    os.killpg(proc.pid, signum)
                    if signum != signal.SIGKILL:
                        os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def _stop(self, signum: int | None, grace_seconds: float) -> float:
        """Sends `signum` (None: nothing), then SIGKILL after `grace_seconds` (or at a
        further Ctrl-C; a repeated SIGTERM, as schedulers send, is not one); returns seconds."""
        t0 = time.monotonic()
        signals_before = len(self.interrupts.received)
        if signum is not None:
            self._send(signum)
        deadline = t0 + grace_seconds
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            if signal.SIGINT in self.interrupts.received[signals_before:]:
                break  # a second Ctrl-C: do not wait for the grace period
            time.sleep(POLL_S)
        running = [i for i, p in enumerate(self.procs) if p.poll() is None]
        if running:
            self.log(f"worker(s) {running} still running after {time.monotonic() - t0:.1f} s: SIGKILL")
            self._send(signal.SIGKILL)
        for index, proc in enumerate(self.procs):
            try:
                proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                self.log(
                    f"worker {index} (pid {proc.pid}) survives SIGKILL (stuck in the kernel?); "
                    "giving up on it"
                )
        self._join_output()
        return time.monotonic() - t0

    def _join_output(self) -> None:
        # A pipe stays open while a grandchild holds it: do not wait for those forever.
        for thread in self.threads:
            thread.join(timeout=1.0)


def launch(
    command: list[str],
    config: LaunchConfig,
    *,
    env: dict | None = None,
    cwd: str | None = None,
    out=None,
    err=None,
    interrupts: Interrupts | None = None,
    handle_signals: bool = False,
) -> int:
    """Runs `command` as `config.num_workers` local workers, relaunching up to
    `config.restarts` times.

    Args:
      command: the argv every worker runs (each gets its own TF_CONFIG).
      config: workers, first port (None: the kernel picks; each launch uses fresh ports),
        restarts, grace seconds from SIGTERM to SIGKILL, GPUs per worker.
      env: base environment (default os.environ); cwd: the workers' directory.
      out, err: where prefixed worker lines and launcher messages go (default sys.stdout/err).
      interrupts: shared signal record (tests append to it to simulate a signal).
      handle_signals: install SIGINT/SIGTERM handlers that forward to the workers (main
        thread only; the previous handlers are restored on return).
    Returns:
      the launcher's exit code: 0, the failed worker's code, or 128 + signal.
    """
    interrupts = interrupts or Interrupts()
    previous = {}
    if handle_signals:
        previous = {s: signal.signal(s, interrupts) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _launch_attempts(
            command,
            config,
            dict(os.environ if env is None else env),
            cwd,
            out or sys.stdout,
            err or sys.stderr,
            interrupts,
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _launch_attempts(command, config: LaunchConfig, env, cwd, out, err, interrupts) -> int:
    used_ports: set[int] = set()
    # Each worker its own GPUs (None: no GPUs, CPU workers).
    gpus = gpus_lib.assign(config.num_workers, gpus_lib.node_gpus(env), config.gpus_per_worker)
    result = None
    n, restarts = config.num_workers, config.restarts
    for attempt in range(restarts + 1):
        if interrupts.received:
            return 128 + interrupts.received[0]
        # Fresh ports on every attempt: the dead group's may still be held (TIME_WAIT).
        ports = find_free_ports(n, config.port, exclude=used_ports)
        used_ports.update(ports)
        addresses = [f"{LOCALHOST}:{p}" for p in ports]
        envs = [worker_env(env, addresses, i, None if gpus is None else gpus[i]) for i in range(n)]
        group = WorkerGroup(
            [list(command)] * n,
            envs,
            out=out,
            err=err,
            grace_seconds=config.grace_seconds,
            interrupts=interrupts,
            cwd=cwd,
        )
        if attempt:
            group.log(f"restart {attempt} of {restarts} on {', '.join(addresses)}")
        else:
            group.log(f"{n} worker(s) on {', '.join(addresses)}")
            if gpus is not None:
                group.log("GPUs: " + "; ".join(f"worker {i}: {g}" for i, g in enumerate(gpus)))
        group.start()
        result = group.wait()
        if result.ok:
            group.log("all workers finished")
            return 0
        if result.interrupted is not None:
            return result.exit_code()
        if attempt == restarts:
            group.log(
                f"giving up after {restarts} restart(s): exit code {result.exit_code()}"
                if restarts
                else f"exit code {result.exit_code()} (no --restarts left)"
            )
    return result.exit_code()
