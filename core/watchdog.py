"""The stall watchdog of a training process: no progress for --stall_minutes -> say where, end.

With no collective timeout (the default: TensorFlow's timeouts are for debugging), a worker
whose peer stalls (a SIGSTOPped process, a hung filesystem, a collective its peer never
enters, a peer that never starts) waits forever, and so does every other worker. The
coordination service notices a peer whose heartbeats stop (10 s by default, TSL's
coordination_service_agent.cc kDefaultHeartbeatTimeout) but not one that is alive and
waiting for the wrong thing, and a worker that never joins is waited for one hour
(kDefaultClusterRegisterTimeout there; TensorFlow's Python passes 0, "the system picks",
tensorflow/python/distribute/collective_all_reduce_strategy.py:562-568).

So every process has a watchdog: the trainer reports each unit of progress (a set-up step,
each training or validation call, each save) with `Watchdog.progress(phase, step, doing)`.
The clock runs in a small SIDECAR process (`python -m core.watchdog`), not in a thread:
while TensorFlow waits for the cluster to form (TFE_EnableCollectiveOps, reached from
collective_all_reduce_strategy.py:602 through context.py:745) it holds the GIL, so no
Python thread of the process runs. The sidecar reads the progress lines from a pipe;
after half the bound it warns once, after the bound it writes the report (phase, global
step, the call in flight, whether each peer's port accepts connections), asks the process
for the Python stacks of its threads (SIGUSR1, which `faulthandler` answers from C, GIL or
not) and ends it with SIGALRM: status 142 (128 + 14) to a shell, SLURM or Kubernetes,
>= 128 so Kubeflow's ExitCode restart policy retries it. isic-launch, srun
--kill-on-bad-exit and Kubernetes then stop and restart the whole group, and the same
command resumes from the last checkpoint (saves are published atomically, so a stall
during one leaves the previous checkpoint intact: launch/training/checkpoints.py).

Standard library only, so the launcher and tests can use it without TensorFlow.
"""

import argparse
import dataclasses
import faulthandler
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

STALL_SIGNAL = signal.SIGALRM  # how the sidecar ends a stalled process
STALL_EXIT_STATUS = 128 + STALL_SIGNAL  # 142: what a shell or scheduler reports for it
STACKS_SIGNAL = signal.SIGUSR1  # asks the process for its threads' stacks (faulthandler)
# The first line of a stall report contains this; isic-launch repeats that line.
STALL_MARK = " stalled: no progress for "
PROBE_TIMEOUT_S = 1.0
STACKS_WAIT_S = 1.0  # for the stacks to be written before the process is ended
KILL_AFTER_S = 10.0  # SIGKILL when SIGALRM did not end it (a handler someone installed)


class RestartGroup(Exception):
    """This process ends so that its group restarts: a peer worker is gone (the coordination
    service reported it, or a collective was aborted because of it). Not a UserError:
    nothing the user set is wrong, and the status must make schedulers restart the group."""

    exit_status = STALL_EXIT_STATUS


def peers_from_tf_config(env=os.environ) -> tuple[int | None, list[str]]:
    """(this task's index among chief+workers, their host:port addresses) from TF_CONFIG;
    (None, []) without one."""
    try:
        config = json.loads(env.get("TF_CONFIG", ""))
        cluster, task = config["cluster"], config["task"]
    except (ValueError, KeyError, TypeError):
        return None, []
    addresses = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
    offset = len(cluster.get("chief", [])) if task.get("type") == "worker" else 0
    return offset + int(task.get("index", 0)), addresses


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """'accepts connections' or why not, for a host:port (a worker's gRPC server)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return "accepts connections"
    except ConnectionRefusedError:
        return "refuses connections: that worker never started its server, or has exited"
    except (OSError, ValueError) as e:
        return f"unreachable ({e})"


@dataclasses.dataclass
class StallClock:
    """The sidecar's bookkeeping, on any clock (pure: tests drive it)."""

    stall_seconds: float
    name: str = "isic-train"
    option: str = ""
    since: float = 0.0
    phase: str = "set-up"
    step: int | None = None
    doing: str = "starting"
    warned: bool = False

    def progress(self, now: float, phase: str, step: int | None, doing: str) -> None:
        self.since, self.phase, self.step, self.doing, self.warned = now, phase, step, doing, False

    def where(self) -> str:
        """'training at step 6: a training call of 2 steps' (what the process is doing)."""
        at = f" at step {self.step}" if self.step is not None else ""
        return f"{self.phase}{at}" + (f": {self.doing}" if self.doing else "")

    def check(self, now: float) -> str | None:
        """'warn' once at half the bound, 'stall' at the bound, else None."""
        idle = now - self.since
        if idle >= self.stall_seconds:
            return "stall"
        if not self.warned and idle >= self.stall_seconds / 2:
            self.warned = True
            return "warn"
        return None

    def warning(self, now: float) -> str:
        return (
            f"{self.name}: no progress for {now - self.since:.0f} s in {self.where()}; the watchdog "
            f"ends this process at {self.stall_seconds:.0f} s ({self.option})"
        )

    def report(self, now: float, peers: list[str], probe_fn=probe) -> str:
        """The stall report: one summary line (STALL_MARK), then each peer's port."""
        lines = [
            f"{self.name}{STALL_MARK}{now - self.since:.0f} s ({self.option}) in {self.where()}. "
            f"Ending it with {STALL_SIGNAL.name} (exit status {STALL_EXIT_STATUS}) so the launcher "
            "or scheduler stops (and may restart) the group; a training run's last checkpoint is "
            "intact and the same command resumes from it. Its Python stacks follow."
        ]
        lines += [f"  task {i} at {address}: {probe_fn(address)}" for i, address in enumerate(peers)]
        return "\n".join(lines)


class Watchdog:
    """The process's side: starts the sidecar, sends it each unit of progress.

    Args:
      stall_seconds: the bound; 0 or less turns the watchdog off (no sidecar).
      name: who this process is in messages ("isic-train worker 1").
      option: the option that sets the bound, for messages.
      peers: host:port of every task of the cluster, probed in the report.
    """

    def __init__(self, stall_seconds: float, name: str = "isic-train", option: str = "", peers=()):
        self.stall_seconds, self.name, self.option, self.peers = stall_seconds, name, option, list(peers)
        self._sidecar: subprocess.Popen | None = None

    def __enter__(self):
        if self.stall_seconds <= 0:
            return self
        # The sidecar asks for the stacks with SIGUSR1 and ends the process with SIGALRM:
        # faulthandler answers the first from C; the second must keep its default action.
        faulthandler.register(STACKS_SIGNAL, file=sys.stderr, all_threads=True)
        if threading.current_thread() is threading.main_thread():  # signal() only works there
            signal.signal(STALL_SIGNAL, signal.SIG_DFL)
        self._sidecar = subprocess.Popen(
            [sys.executable, "-m", "core.watchdog", json.dumps(self._arguments())],
            stdin=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=_project_root()),
        )
        # Never block on a full pipe (a sidecar stopped with the process group): a dropped
        # progress line only makes the report one call older.
        os.set_blocking(self._sidecar.stdin.fileno(), False)
        return self

    def __exit__(self, *exc):
        if self._sidecar is not None:
            try:
                self._sidecar.stdin.close()  # the sidecar ends at end of file
                self._sidecar.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._sidecar.kill()
            self._sidecar = None
            faulthandler.unregister(STACKS_SIGNAL)

    def progress(self, phase: str, step: int | None = None, doing: str = "") -> None:
        """Records progress: the process now is in `phase` (set-up, training, validation,
        save, export) at global `step`, doing `doing` (the call it is about to make)."""
        if self._sidecar is None:
            return
        try:
            os.write(self._sidecar.stdin.fileno(), (json.dumps([phase, step, doing]) + "\n").encode())
        except BlockingIOError:
            pass
        except OSError:  # the sidecar is gone (killed with the process group): no watchdog
            self._sidecar = None

    def _arguments(self) -> dict:
        return {
            "pid": os.getpid(),
            "stall_seconds": self.stall_seconds,
            "name": self.name,
            "option": self.option,
            "peers": self.peers,
        }


def _project_root() -> str:
    """The folder holding the `core` package (the sidecar runs `-m core.watchdog`)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def for_training(stall_minutes: float) -> Watchdog:
    """The watchdog of an isic-train process, named after its task in TF_CONFIG."""
    index, peers = peers_from_tf_config()
    name = "isic-train" if index is None else f"isic-train worker {index}"
    return Watchdog(60.0 * stall_minutes, name=name, option=f"--stall_minutes {stall_minutes:g}", peers=peers)


def _end(pid: int) -> None:
    """Asks `pid` for its stacks, then ends it with STALL_SIGNAL (SIGKILL if that fails)."""
    for signum, wait in ((STACKS_SIGNAL, STACKS_WAIT_S), (STALL_SIGNAL, KILL_AFTER_S)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sidecar(arguments: dict, fd: int = 0, out=sys.stderr, clock=time.monotonic) -> None:
    """The sidecar's loop: progress lines from `fd` in, warnings and the report out (see the
    module doc). Ends at end of file (the process closed the pipe or died) or after ending
    the process."""
    # Signals meant for the process (isic-launch forwards them to its session) are not ours:
    # the sidecar lives until the process closes the pipe.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    state = StallClock(arguments["stall_seconds"], arguments["name"], arguments["option"], since=clock())
    poll = min(max(state.stall_seconds / 20, 0.05), 5.0)
    pending = b""
    while True:
        if select.select([fd], [], [], poll)[0]:
            data = os.read(fd, 65536)
            if not data:
                return
            *complete, pending = (pending + data).split(b"\n")
            for line in complete:
                state.progress(clock(), *json.loads(line))
        verdict = state.check(clock())
        if verdict == "warn":
            print(state.warning(clock()), file=out, flush=True)
        elif verdict == "stall":
            print(state.report(clock(), arguments["peers"]), file=out, flush=True)
            _end(arguments["pid"])
            return


def main() -> None:
    parser = argparse.ArgumentParser(description="The stall watchdog's sidecar (started by Watchdog).")
    parser.add_argument("arguments", help="JSON: pid, stall_seconds, name, option, peers")
    sidecar(json.loads(parser.parse_args().arguments))


if __name__ == "__main__":
    main()
