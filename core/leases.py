"""The one-writer lock where `flock` does not exist: a lease file that names its holder.

Object stores (gs://), FUSE mounts of them (gcsfuse, Vertex AI's /gcs/) and some Lustre
mounts have no `flock`. There the lock file holds one JSON line: the holder (host, pid,
start, command), a random token and `renewed`, the holder's clock (seconds since the
epoch) at its last renewal. A thread of the holder rewrites it every RENEW_SECONDS; a
lease not renewed for STALE_SECONDS belongs to a run that died (or lost its network) and
is taken over with a warning, as is one whose pid is gone on this very host. The holder
deletes the file when it is done.

The lease is advisory: an object store offers no compare-and-swap through tf.io.gfile, so
two runs that start within the same second on an unheld folder can both write the lease.
The later write wins; the loser notices on its read-back (refused at once) or at its next
renewal (an error in its log). Clocks of the machines must agree to well within
STALE_SECONDS (NTP does).

Standard library and absl only, like locks.py (which calls `hold`).
"""

import contextlib
import dataclasses
import json
import threading
import time
import uuid

from absl import logging

from core import files
from core.errors import UserError
from core.holders import Holder
from core.holders import LockedError
from core.holders import parse_holder

RENEW_SECONDS = 30.0
STALE_SECONDS = 120.0  # four missed renewals


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lease file's content."""

    holder: Holder
    token: str
    renewed: float  # time.time() of the holder at its last renewal

    def to_json(self) -> str:
        return (
            json.dumps(
                {**dataclasses.asdict(self.holder), "token": self.token, "renewed": self.renewed},
                sort_keys=True,
            )
            + "\n"
        )


def read(path: str) -> Lease | None:
    """The lease at `path`; None if there is no file or it is empty (released)."""
    if not files.exists(path):
        return None
    text = files.read_bytes(path).decode("utf-8", "replace").strip()
    if not text:
        return None
    holder = parse_holder(text)
    try:
        fields = json.loads(text)
        return Lease(holder, str(fields.get("token", "")), float(fields.get("renewed", 0.0)))
    except (ValueError, TypeError, AttributeError):
        return Lease(holder, "", 0.0)  # not a lease: written by flock's lock, or garbage


def _read_quietly(path: str) -> Lease | None:
    """`read`, None also when the file vanished between the check and the read."""
    try:
        return read(path)
    except Exception:  # tf.errors too: absent == not held
        return None


@contextlib.contextmanager
def hold(directory: str, name: str, command: str, *, advice: str):
    """Holds the lease `directory/name` for the block (see the module docstring).

    Yields the Holder of a stale lease that was taken over, or None.
    Raises:
      LockedError: a live lease names another holder.
      UserError: the lease file cannot be written.
    """
    path = f"{directory.rstrip('/')}/{name}"
    current = _read_quietly(path)
    stale = None
    if current is not None:  # unreadable content has renewed=0: stale
        age = time.time() - current.renewed
        if age < STALE_SECONDS and current.holder.is_gone() is not True:
            raise LockedError(
                f"{directory} is in use by {current.holder.describe()}, whose lease was renewed "
                f"{age:.0f} s ago; {advice}. (Lease file: {path}; a lease not renewed for "
                f"{STALE_SECONDS:.0f} s is taken over.)",
                current.holder,
            )
        stale = current.holder
        logging.warning(
            "taking over the lease %s of %s: not renewed for %.0f s%s",
            path,
            stale.describe(),
            age,
            " (its pid is gone)" if stale.is_gone() else "",
        )
    mine = Lease(Holder.this_process(command), uuid.uuid4().hex, time.time())
    _write(path, mine, command)
    won = _read_quietly(path)
    if won is None or won.token != mine.token:
        who = won.holder.describe() if won else "another process"
        raise LockedError(
            f"{directory} was just taken by {who}; {advice}. (Lease file: {path}.)",
            won.holder if won else None,
        )
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(path, mine, stop), daemon=True, name="lease-renewal")
    renewer.start()
    try:
        yield stale
    finally:
        stop.set()
        renewer.join()
        if (_read_quietly(path) or mine).token == mine.token:
            with contextlib.suppress(Exception):
                files.remove(path)


def _write(path: str, lease: Lease, command: str) -> None:
    try:
        files.write_atomic(path, lease.to_json())
    except Exception as e:  # OSError or a tf.errors.OpError
        raise UserError(
            f"cannot write the lease file {path}: {e}; {command} needs a folder it can write to"
        ) from None


def _renew(path: str, mine: Lease, stop: threading.Event) -> None:
    """Rewrites the lease every RENEW_SECONDS until `stop`; logs once if it was taken."""
    while not stop.wait(RENEW_SECONDS):
        current = _read_quietly(path)
        if current is not None and current.token != mine.token:
            logging.error(
                "the lease %s was taken over by %s: two runs may now write the same folder; stop one of them",
                path,
                current.holder.describe(),
            )
            return
        try:
            files.write_atomic(path, dataclasses.replace(mine, renewed=time.time()).to_json())
        except Exception as e:  # retried at the next tick
            logging.warning("could not renew the lease %s: %s", path, e)
