"""One writer per output folder: an exclusive lock that names its holder.

    with locks.exclusive(model_dir, ".isic-train.lock", "isic-train", advice="..."):
        ...  # only this process writes into model_dir

The lock is `flock` on a file in the folder, so the kernel releases it whenever the holder
ends, even by SIGKILL or a crash; on Linux NFS clients flock is forwarded to the server,
so it also holds between machines sharing the folder. The file records the holder (host,
pid, start time, command) as one JSON line, so that a refused second run can say who has
the folder. The holder empties the file when it is done; a file that still names a
holder while nobody holds the lock was left by a process that died (SIGKILL, a crashed
machine): the lock is taken over with a warning saying whose it was.

The lock file itself is never deleted: deleting it while another process waits on the
old inode would let two processes hold "the" lock at once.

Where `flock` does not exist the same file is a lease instead (core/leases.py):
on remote paths (gs://, which tf.io.gfile writes); on FUSE mounts (gcsfuse, Vertex AI's
/gcs/, s3 mounts), where the kernel emulates a missing flock within one machine only; and
on local mounts whose flock fails with ENOSYS, EOPNOTSUPP or ENOLCK (some Lustre and NFS
mounts without a lock daemon). The last two with a warning: never a crash, never no lock.

Standard library and absl only: the builder takes this lock before it imports TensorFlow.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os

from absl import logging

from core import files
from core import leases
from core.errors import UserError
from core.holders import Holder
from core.holders import LockedError
from core.holders import parse_holder

# flock's errors on a filesystem that has no flock (ENOTSUP is EOPNOTSUPP on Linux; NFS
# without lockd answers ENOLCK).
_NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK)


@contextlib.contextmanager
def exclusive(directory: str, name: str, command: str, *, advice: str):
    """Holds the exclusive lock `directory/name` for the block (creating `directory`).

    Args:
      directory: the folder one process at a time may write.
      name: the lock file's name inside it.
      command: what the holder is, for the messages ("isic-train").
      advice: the end of the refusal message, e.g. "wait for it to finish or use
        another --model_dir".
    Yields:
      The Holder of a stale lock that was taken over, or None.
    Raises:
      LockedError: a live process holds the lock; the message names it.
      UserError: the lock file cannot be created (read-only or full disk, no permission).
    """
    kind = mount_type(directory) if files.is_local(directory) else ""
    if not files.is_local(directory) or kind.startswith("fuse"):
        if kind:  # the kernel emulates flock on FUSE mounts that lack it, within one machine
            logging.warning(
                "%s is on a FUSE mount (%s), whose flock holds within this machine "
                "only; using a lease file instead, which is advisory "
                "(core/leases.py)",
                directory,
                kind,
            )
        with _lease(directory, name, command, advice) as stale:
            yield stale
        return
    path = os.path.join(directory, name)
    with _open_lock_file(directory, path, command) as lock:
        if not _flock(lock, directory, path, command, advice):
            lock.close()
            with _lease(directory, name, command, advice) as stale:
                yield stale
            return
        stale = _claim(lock, path, command)
        try:
            yield stale
        finally:
            with contextlib.suppress(OSError):  # e.g. the disk went read-only meanwhile
                lock.seek(0)
                lock.truncate()  # released: nobody is named any more (flock ends at close)


def _open_lock_file(directory: str, path: str, command: str):
    """The lock file `path` opened for reading and writing (created with `directory`)."""
    if files.exists(directory) and not files.isdir(directory):
        raise UserError(
            f"{directory} is a file, not a folder; {command} needs a folder there: "
            "pass another path, or move that file away"
        )
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(
            f"cannot create the lock file {path}: {e.strerror or e}; {command} needs a folder it can write to"
        ) from None
    return os.fdopen(fd, "r+", errors="replace")


def _flock(lock, directory: str, path: str, command: str, advice: str) -> bool:
    """Takes the flock of the open `lock` file; False where the filesystem has none.

    Raises:
      LockedError: another process holds it (the message names the holder).
    """
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in _NO_FLOCK:
            logging.warning(
                "%s: this filesystem has no flock (%s); using a lease file "
                "instead, which is advisory (core/leases.py)",
                directory,
                os.strerror(e.errno),
            )
            return False
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        holder = _read_holder(lock)
        who = holder.describe() if holder else f"another {command}"
        raise LockedError(f"{directory} is in use by {who}; {advice}. (Lock file: {path}.)", holder) from None


def _claim(lock, path: str, command: str) -> Holder | None:
    """Names this process in the held `lock` file; returns the stale holder it named."""
    stale = _read_holder(lock)
    if stale is not None:
        _warn_stale(stale, path)
    try:
        _write_holder(lock, Holder.this_process(command))
    except OSError as e:  # a full disk: not even the few bytes of the holder fit
        raise UserError(
            f"cannot write the lock file {path}: {e.strerror or e}; {command} needs a folder it can write to"
        ) from None
    return stale


def mount_type(path: str, table: str | None = None) -> str:
    """The filesystem type of the mount that holds the local `path` ("ext4", "nfs4",
    "fuse.gcsfuse"), from `table` (the text of /proc/self/mounts, read by default);
    "" where unknown (no /proc)."""
    if table is None:
        try:
            table = files.read_bytes("/proc/self/mounts").decode("utf-8", "replace")
        except OSError:
            return ""
    real = os.path.realpath(path)  # the mount of what a symlink points to
    best, kind = "", ""
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")  # /proc/mounts escapes spaces
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _lease(directory, name, command, advice):
    return leases.hold(directory, name, command, advice=advice)


def _warn_stale(stale: Holder, path: str) -> None:
    gone = stale.is_gone()
    if gone is None:
        why = (
            f"its host {stale.host} no longer holds it (crashed or killed); if that run is "
            "in fact still going, this filesystem does not share locks between machines: "
            "stop one of the two runs"
        )
    elif gone:
        why = f"pid {stale.pid} is gone (killed or crashed)"
    else:
        why = f"pid {stale.pid} no longer holds it (it is now another process)"
    logging.warning("taking over the lock %s left by %s: %s", path, stale.describe(), why)


def _read_holder(lock) -> Holder | None:
    """The holder the lock file names, or None (empty, or not written by this module)."""
    lock.seek(0)
    text = lock.read().strip()
    return parse_holder(text) if text else None


def _write_holder(lock, holder: Holder) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps(dataclasses.asdict(holder), sort_keys=True) + "\n")
    lock.flush()


def holder_of(directory: str, name: str) -> Holder | None:
    """The holder named in `directory/name` (None: no file, or nobody named); no locking."""
    path = os.path.join(directory, name)
    if not files.exists(path):
        return None
    with files.open(path) as f:
        return _read_holder(f)
