"""The stall watchdog of a training process: no progress for --stall_minutes -> say where, exit.

With no collective timeout (the default: TensorFlow's timeouts are for debugging), a worker
whose peer stalls (a SIGSTOPped process, a hung filesystem, a collective its peer never
enters, a peer that never starts) waits forever, and so does every other worker. The
coordination service notices a peer whose heartbeats stop (10 s by default, TSL's
coordination_service_agent.cc kDefaultHeartbeatTimeout) but not one that is alive and
waiting for the wrong thing, and a worker that never joins is waited for one hour
(kDefaultClusterRegisterTimeout there; TensorFlow's Python passes 0, "the system picks",
tensorflow/python/distribute/collective_all_reduce_strategy.py:562-568).

So every process runs this watchdog: the trainer reports each unit of progress (entering a
phase, each training or validation call, each save) with `progress(phase, step, doing)`.
A daemon thread checks the time since the last report; after half the bound it warns once,
after the bound it writes what the process was doing (phase, global step, the call in
flight, the state of its peers' ports, the Python stacks of its threads) to stderr and
ends the process with STALL_EXIT_STATUS. Exiting is the point: isic-launch, SLURM
(--kill-on-bad-exit) and Kubernetes then stop and restart the whole group, and the same
command resumes from the last checkpoint (saves are published atomically, so a stall
during one leaves the previous checkpoint intact: checkpoints.py).

Standard library only, so the launcher and tests can use it without TensorFlow.
"""

import json
import os
import socket
import sys
import threading
import time
import traceback
from typing import Callable

# 128 + SIGALRM: the watchdog's alarm. >= 128 so that Kubeflow's ExitCode restart policy
# retries it (it treats 1-127 as permanent); distinct from 130/143 (stopped on a signal
# after checkpointing, preemption.py) and from 1 (a problem the message explains).
STALL_EXIT_STATUS = 142
# The first line of a stall report contains this; isic-launch repeats that line.
STALL_MARK = " stalled: no progress for "
PROBE_TIMEOUT_S = 1.0


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


def thread_stacks() -> str:
    """The Python stack of every thread of this process (the main thread's shows the call
    it is blocked in: a TensorFlow op releases the GIL but keeps its Python frame)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)))
    return "".join(parts)


class Watchdog:
    """Exits the process when `progress` has not been called for `stall_seconds`.

    Args:
      stall_seconds: the bound; 0 or less turns the watchdog off.
      name: who this process is in messages ("worker 1"; "isic-train" when alone).
      option: the option that sets the bound, for messages.
      peers: host:port of every task of the cluster, probed in the report.
      out: where the report goes (stderr); exit: called with STALL_EXIT_STATUS
        (os._exit: the main thread is blocked, so a normal exit could not happen).
      clock, poll_s: for tests.
    """

    def __init__(
        self,
        stall_seconds: float,
        name: str = "isic-train",
        option: str = "",
        peers: list[str] | tuple = (),
        out=None,
        exit: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float | None = None,
    ):
        self.stall_seconds, self.name, self.option, self.peers = stall_seconds, name, option, list(peers)
        self._out, self._exit, self._clock = out, exit, clock
        self._poll_s = poll_s if poll_s is not None else min(max(stall_seconds / 20, 0.05), 5.0)
        self._lock = threading.Lock()
        self._since = clock()
        self._phase, self._step, self._doing = "set-up", None, "starting"
        self._warned = False
        self._stopped = threading.Event()
        self.fired = False

    def __enter__(self):
        if self.stall_seconds > 0:
            threading.Thread(target=self._watch, daemon=True, name="isic-stall-watchdog").start()
        return self

    def __exit__(self, *exc):
        self._stopped.set()

    def progress(self, phase: str, step: int | None = None, doing: str = "") -> None:
        """Records progress: the process now is in `phase` (set-up, training, validation,
        save, export) at global `step`, doing `doing` (the call it is about to make)."""
        with self._lock:
            self._since = self._clock()
            self._phase, self._step, self._doing = phase, step, doing
            self._warned = False

    def where(self) -> str:
        """'training at step 6: a training call of 2 steps' (what the process is doing)."""
        at = f" at step {self._step}" if self._step is not None else ""
        return f"{self._phase}{at}" + (f": {self._doing}" if self._doing else "")

    def check(self) -> bool:
        """One look at the clock: warns at half the bound, fires at the bound. True: fired."""
        with self._lock:
            idle = self._clock() - self._since
            warn = not self._warned and idle >= self.stall_seconds / 2
            if warn:
                self._warned = True
        if idle >= self.stall_seconds:
            self._fire(idle)
            return True
        if warn:
            self._write(
                f"{self.name}: no progress for {idle:.0f} s in {self.where()}; the watchdog "
                f"stops this process at {self.stall_seconds:.0f} s ({self.option})\n"
            )
        return False

    def report(self, idle: float) -> str:
        """The stall report: one summary line, then the peers and the thread stacks."""
        lines = [
            f"{self.name}{STALL_MARK}{idle:.0f} s ({self.option}) in {self.where()}. Exiting with "
            f"status {STALL_EXIT_STATUS} so the launcher or scheduler stops and restarts the "
            "group; the last checkpoint is intact and the same command resumes from it."
        ]
        for index, address in enumerate(self.peers):
            lines.append(f"  task {index} at {address}: {probe(address)}")
        lines.append("Python stacks of this process (the main thread shows the call it waits in):")
        return "\n".join(lines) + "\n" + thread_stacks()

    def _fire(self, idle: float) -> None:
        self.fired = True
        self._write(self.report(idle))
        self._exit(STALL_EXIT_STATUS)

    def _write(self, text: str) -> None:
        out = self._out or sys.stderr
        out.write(text)
        out.flush()

    def _watch(self) -> None:
        while not self._stopped.wait(self._poll_s):
            if self.check():
                return


def for_training(stall_minutes: float) -> Watchdog:
    """The watchdog of an isic-train process, named after its task in TF_CONFIG."""
    index, peers = peers_from_tf_config()
    name = "isic-train" if index is None else f"isic-train worker {index}"
    return Watchdog(60.0 * stall_minutes, name=name, option=f"--stall_minutes {stall_minutes:g}", peers=peers)
