"""What the launcher says about its workers: their output lines, prefixed, and how each ended.

Standard library only: the launcher never imports TensorFlow.
"""

import signal
import threading

from core import watchdog


def describe_exit(code: int) -> str:
    """'exit code 3', 'signal SIGKILL', or what the two statuses of a stall say."""
    if code == -watchdog.STALL_SIGNAL:
        return f"signal {watchdog.STALL_SIGNAL.name}: its stall watchdog ended it"
    if code == watchdog.STALL_EXIT_STATUS:
        return f"exit code {code}: it lost a peer"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def process_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` (R running, S sleeping, T stopped, ...; '?'
    where /proc cannot tell): from /proc/<pid>/stat, after the parenthesised name."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class Output:
    """Copies a worker's lines to a shared stream with a "[wi] " prefix, one line at a time."""

    def __init__(self, stream, lock: threading.Lock):
        self.stream, self.lock = stream, lock

    def write_line(self, text: str) -> None:
        with self.lock:
            self.stream.write(text if text.endswith("\n") else text + "\n")
            self.stream.flush()

    def pump(self, pipe, prefix: str, seen=None) -> threading.Thread:
        """Copies `pipe`'s lines with `prefix`; `seen(line)` is called with each one."""

        def run():
            with pipe:
                for raw in iter(pipe.readline, b""):
                    line = raw.decode("utf-8", errors="replace")
                    self.write_line(prefix + line)
                    if seen is not None:
                        seen(line)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread
