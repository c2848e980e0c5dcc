"""Outputs that cannot be written (full disk, read-only or forbidden folder) as user errors.

`writing(what, path)` wraps one write of a run's outputs (a checkpoint, history.csv, a
plot, a model export, TensorBoard logs). If it fails because of the disk (no space,
quota, a file-size limit, read-only filesystem, no permission, a file where a folder
should be), the error
becomes an `OutputError`: a UserError whose message names the file and the cause, which
`isic-train` prints without a traceback (exit status 1). What was written before is
intact: every output goes to a temporary name first and is renamed only when complete
(core/files.py), and a checkpoint counts only once the `checkpoint` state file
names it, which happens after its files are written and checked (checkpoints.Saver).

Python reports these failures as OSError; TensorFlow's writers (checkpoints, SavedModel,
summaries) as its own errors, with the OS's cause at the end of the message:
ENOSPC -> ResourceExhaustedError, EACCES and EROFS -> PermissionDeniedError, EFBIG (a
file larger than `ulimit -f`, a limit SLURM passes on from the submitting shell) ->
OutOfRangeError, which also ends every dataset, so it counts only when it names the folder.
"""

import contextlib
import os
import re

import tensorflow as tf

from core import files
from core.errors import UserError

# Always a write failure when raised by a file write.
_TF_WRITE_ERRORS = (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError)
# A write failure only when the message names the target's folder: the same types also
# come from collectives (a checkpoint under MultiWorkerMirroredStrategy runs some).
_TF_PATH_ERRORS = (
    tf.errors.FailedPreconditionError,
    tf.errors.NotFoundError,
    tf.errors.AlreadyExistsError,
    tf.errors.UnknownError,
    tf.errors.OutOfRangeError,
)
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\].*$", re.S)


class OutputError(UserError):
    """An output of the run could not be written; `path` and `cause` say which and why."""

    def __init__(self, message: str, path: str, cause: str):
        super().__init__(message)
        self.path, self.cause = path, cause


@contextlib.contextmanager
def writing(what: str, path: str, kept: str = ""):
    """Turns a failed write of `what` (e.g. "checkpoint") at `path` into an OutputError.

    Args:
      what: the kind of output, for the message.
      path: the file or folder being written.
      kept: what is still intact, for the message (default: a general statement).
    """
    try:
        yield
    except OSError as e:
        raise _error(what, e.filename or path, e.strerror or str(e), kept) from None
    except tf.errors.OpError as e:
        folder = os.path.dirname(files.absolute(path))
        if not (
            isinstance(e, _TF_WRITE_ERRORS)
            or (isinstance(e, _TF_PATH_ERRORS) and folder in (e.message or ""))
        ):
            raise
        raise _error(what, path, tf_cause(e.message), kept) from None


def tf_cause(message: str) -> str:
    """The OS's cause at the end of a TensorFlow file error: '... /x/y.tmp; No space left
    on device [Op:SaveV2]' -> 'No space left on device'."""
    text = _OP_SUFFIX.sub("", message or "").strip()
    return text.rsplit("; ", 1)[-1] if "; " in text else text


def _error(what: str, path: str, cause: str, kept: str) -> OutputError:
    kept = kept or (
        "Everything written before is intact (outputs are written to a "
        "temporary name and renamed when complete)"
    )
    return OutputError(
        f"cannot write the {what} {path}: {cause}. {kept}. Free some space or make the folder "
        "writable, then run the same command again: it resumes from the last checkpoint.",
        path,
        cause,
    )
