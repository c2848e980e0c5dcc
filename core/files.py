"""Writing files so that a crash, a full disk or a kill never leaves a half-written one.

Every output of the project that a reader may open while it is being replaced (manifest,
shards, run.json, config.json, history.csv, plots, models, figures) is written to a
temporary name in the same folder and renamed over the target: POSIX `rename` is atomic,
so readers see the old file or the new one, never a mix. Folders (a SavedModel) are
written the same way with `atomic_dir`.
"""

import contextlib
import os
import shutil
import tempfile

from core.errors import UserError


def temporary_name(path: str) -> str:
    """The temporary sibling of `path`, keeping its extension (Keras and Matplotlib pick
    the format from it): `a/model.keras` -> `a/model.tmp.keras`."""
    root, ext = os.path.splitext(path)
    return f"{root}.tmp{ext}"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path to write; renames it to `path` if the block succeeds.

    On an exception the temporary file is removed and `path` is untouched.
    """
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """`open(path, mode)` that publishes the file only when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes `data` (bytes or text) to `path` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yields a temporary folder to fill; puts it at `path` if the block succeeds.

    On an exception the temporary folder is removed and `path` is untouched. A folder
    cannot be renamed over a non-empty one, so an existing `path` is first renamed to
    `<path>.old` and deleted after the new one is in place: a crash between the two
    renames leaves the previous folder complete at `<path>.old`.
    """
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp, old = temporary_name(path), path + ".old"
    for leftover in (tmp, old):  # from a run killed in the middle
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        yield tmp
        if os.path.exists(path):
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(old) and not os.path.exists(path):
            os.rename(old, path)  # the second rename failed: put the previous one back
        raise
    shutil.rmtree(old, ignore_errors=True)


def ensure_writable(folder: str) -> None:
    """Creates `folder` and checks that files can be written in it, before any work.

    Raises:
      UserError: the folder cannot be created or written to (the message names it).
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to the output folder {folder} ({e.strerror or e}); "
                        "pass an --output_dir you can write to") from None
