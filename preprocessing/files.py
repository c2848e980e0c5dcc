"""Writing files so that a crash, a full disk or a kill never leaves a half-written one.

Every output of the project that a reader may open while it is being replaced (manifest,
shards, run.json, config.json, history.csv, plots, models, figures) is written to a
temporary name in the same folder and renamed over the target: POSIX `rename` is atomic,
so readers see the old file or the new one, never a mix.
"""

import contextlib
import os


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
