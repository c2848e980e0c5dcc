"""Who holds a folder's lock or lease: the record both kinds write, and the refusal.

Shared by core/locks.py (flock) and core/leases.py (a renewed file where flock does not
exist), so that neither imports the other's internals.
"""

import dataclasses
import datetime
import json
import os
import socket

from core.errors import UserError


class LockedError(UserError):
    """Another live process holds the folder's lock; `holder` says who (or None)."""

    def __init__(self, message: str, holder: "Holder | None"):
        super().__init__(message)
        self.holder = holder


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock."""

    host: str
    pid: int
    started: str  # local time with UTC offset, e.g. 2025-12-01 21:04:38 +0000
    command: str

    @classmethod
    def this_process(cls, command: str) -> "Holder":
        started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
        return cls(socket.gethostname(), os.getpid(), started, command)

    def describe(self) -> str:
        """'isic-train (pid 1234 on node7, started 2025-12-01 21:04:38 +0000)'."""
        return f"{self.command} (pid {self.pid} on {self.host}, started {self.started})"

    def is_gone(self) -> bool | None:
        """True if the process is known to be dead (same host, no such pid); None when it
        runs on another host, where this cannot be checked."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by another user
            return False
        return False


def parse_holder(text: str) -> Holder:
    """The Holder a lock or lease file's JSON names (a placeholder for other content)."""
    try:
        fields = json.loads(text)
        return Holder(**{f.name: fields[f.name] for f in dataclasses.fields(Holder)})
    except (ValueError, TypeError, KeyError):
        return Holder("unknown host", -1, "unknown time", f"a process ({text[:80]!r})")
