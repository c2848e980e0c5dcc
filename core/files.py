"""The one place that touches files: local paths through `os`, others through `tf.io.gfile`.

Every path a command reads or writes (records, manifests, model directories, exports,
metrics, predicted masks) may be a local path or anything `tf.io.gfile` accepts
(`gs://bucket/x`, `ram://x` in tests, `s3://` with tensorflow-io's plugin). Local paths
go through `os` exactly as before; the others through `tf.io.gfile`, imported only when a
remote path is met, so the builder's worker processes and `--help` never load TensorFlow.

Publishing a file whole, so that a crash, a full disk or a kill never leaves a half-written
one where a reader looks (manifest, shards, run.json, config.json, history.csv, plots,
models, figures):
  local   written to a temporary name in the same folder and renamed over the target:
          POSIX `rename` is atomic, so readers see the old file or the new one.
  remote  written directly: an object store's object appears whole when its upload
          completes (a gs:// `rename` is a copy then a delete, TensorFlow's
          tsl/platform/cloud/gcs_file_system.cc RenameObject, so it would add a second
          upload and no atomicity). The bytes are staged in memory or in a local temporary
          file and uploaded in one piece only once the block succeeded, so a failure
          uploads nothing.
Folders (a SavedModel, an export) are written the same way with `atomic_dir`; on an
object store a folder is a set of objects and cannot appear at once: its `marker` file is
uploaded last, so a folder that has its marker is complete.
"""

import builtins
import contextlib
import io
import os
import shutil
import tempfile

from core.errors import UserError

# Remote paths are those with a scheme: gs://, s3://, ram://, hdfs://, file://.
_SCHEME = "://"


def is_local(path: str) -> bool:
    """True for a plain filesystem path (also a FUSE mount such as /gcs/...), False for a
    path with a scheme (gs://b/x), which goes through tf.io.gfile."""
    return _SCHEME not in str(path)


def _gfile():
    """tf.io.gfile, imported on the first remote path only (see the module docstring)."""
    import tensorflow as tf

    return tf.io.gfile


def absolute(path: str) -> str:
    """`os.path.abspath` for local paths; a remote path is already absolute."""
    return os.path.abspath(path) if is_local(path) else path


def exists(path: str) -> bool:
    """Whether a file or folder exists at `path`."""
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
    """Whether `path` is a folder (on object stores: a prefix with objects under it)."""
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def isfile(path: str) -> bool:
    """Whether `path` is a file (an object)."""
    if is_local(path):
        return os.path.isfile(path)
    gfile = _gfile()
    return gfile.exists(path) and not gfile.isdir(path)


def getsize(path: str) -> int:
    """Size of a file in bytes."""
    return os.path.getsize(path) if is_local(path) else _gfile().stat(path).length


def listdir(path: str) -> list[str]:
    """Names in the folder `path` (folders without gfile's trailing slash), unsorted."""
    if is_local(path):
        return os.listdir(path)
    return [name.rstrip("/") for name in _gfile().listdir(path)]


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern` (glob syntax), unsorted."""
    if is_local(pattern):
        import glob as glob_lib

        return glob_lib.glob(pattern)
    return _gfile().glob(pattern)


def makedirs(path: str) -> None:
    """Creates the folder `path` and its parents; no error if it exists."""
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def remove(path: str) -> None:
    """Deletes the file `path`; FileNotFoundError if there is none (as `os.remove`)."""
    if is_local(path):
        os.remove(path)
        return
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    gfile.remove(path)


def rmtree(path: str) -> None:
    """Deletes the folder `path` and everything under it; nothing if it does not exist."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif _gfile().exists(path):
        _gfile().rmtree(path)


def rename(source: str, target: str) -> None:
    """Moves a file (`os.rename` locally; on an object store a copy then a delete, so only
    for files that nobody reads meanwhile, e.g. a damaged checkpoint moved aside)."""
    if is_local(source):
        os.rename(source, target)
    else:
        _gfile().rename(source, target, overwrite=False)


def open(path: str, mode: str = "r", **kwargs):
    """`open(path, mode)` for local paths, `tf.io.gfile.GFile` for remote ones (reading,
    or appending to a log; a file to publish goes through `atomic_open`)."""
    if is_local(path):
        return builtins.open(path, mode, **kwargs)
    return _gfile().GFile(path, mode)


def read_bytes(path: str) -> bytes:
    """The whole file `path` as bytes."""
    with open(path, "rb") as f:
        return f.read()


def temporary_name(path: str) -> str:
    """The temporary sibling of `path`, keeping its extension (Keras and Matplotlib pick
    the format from it): `a/model.keras` -> `a/model.tmp.keras`."""
    root, ext = os.path.splitext(path)
    return f"{root}.tmp{ext}"


@contextlib.contextmanager
def atomic_path(path: str, *, fsync: bool = False):
    """Yields a local path to write; publishes it at `path` if the block succeeds.

    Local `path`: the temporary sibling, renamed over `path`. Remote `path`: a file in a
    local temporary folder (same name, so the extension is kept), uploaded to `path` once
    complete; for libraries that only write local files (Keras, Matplotlib, Pillow). On
    an exception nothing is published and `path` is untouched.
    fsync: local `path` only: flush the file to the disk before the rename, for a file
    that must never be visible before its bytes are stored (shards, the manifest): a
    power cut would otherwise publish an empty file. A remote object is stored when its
    upload returns.
    """
    if not is_local(path):
        with tempfile.TemporaryDirectory(prefix="isic-upload-") as staging:
            tmp = os.path.join(staging, os.path.basename(path))
            yield tmp
            _upload(tmp, path)
        return
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            with builtins.open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _upload(local: str, path: str) -> None:
    """Copies the local file to the remote `path` in one upload (creating its folder)."""
    _make_parent(path)
    _gfile().copy(local, path, overwrite=True)


def _make_parent(path: str) -> None:
    """Creates the folder of the remote `path` (unless it is the bucket or root itself);
    makes ram:// replace the file like the other filesystems do."""
    folder = os.path.dirname(path)
    if _SCHEME in folder and not folder.endswith(_SCHEME):
        _gfile().makedirs(folder)
    # TensorFlow's in-memory ram:// (the tests' object store) appends to an existing
    # file where gs:// and local files are replaced (tsl/platform/ram_file_system.h,
    # NewWritableFile keeps fs_[fname]): delete it first there.
    if path.startswith("ram://") and _gfile().exists(path):
        _gfile().remove(path)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, fsync: bool = False, **kwargs):
    """`open(path, mode)` that publishes the file only when the block succeeds
    (`fsync`: see atomic_path)."""
    if not is_local(path):
        # Small files (JSON, CSV): buffered in memory, uploaded in one write on success.
        buffer = io.BytesIO() if "b" in mode else io.StringIO(newline=kwargs.get("newline"))
        yield buffer
        data = buffer.getvalue()
        write_atomic(path, data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    with atomic_path(path, fsync=fsync) as tmp:
        with builtins.open(tmp, mode, **kwargs) as f:
            yield f


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes `data` (bytes or text) to `path` atomically."""
    if not is_local(path):
        _make_parent(path)
        with _gfile().GFile(path, "wb") as f:  # one write: the object appears when it closes
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(path: str, marker: str | None = None):
    """Yields a local temporary folder to fill; puts it at `path` if the block succeeds.

    On an exception the temporary folder is removed and `path` is untouched.
    Local: a folder cannot be renamed over a non-empty one, so an existing `path` is
    first renamed to `<path>.old` and deleted after the new one is in place: a crash
    between the two renames leaves the previous folder complete at `<path>.old`.
    Remote: the previous folder is deleted, then the files are uploaded with `marker`
    (a top-level file name, e.g. "saved_model.pb") last: the folder is complete exactly
    when its marker exists.
    """
    if not is_local(path):
        with tempfile.TemporaryDirectory(prefix="isic-upload-") as staging:
            tmp = os.path.join(staging, os.path.basename(path.rstrip("/")))
            yield tmp
            rmtree(path)
            _upload_tree(tmp, path, marker)
        return
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


def _upload_tree(local: str, path: str, marker: str | None) -> None:
    """Uploads the local folder to `path`, the top-level file `marker` last."""
    uploads = []
    for root, _, names in os.walk(local):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), local)
            uploads.append((relative == marker, relative))
    _gfile().makedirs(path)
    for _, relative in sorted(uploads):
        _upload(os.path.join(local, relative), os.path.join(path, relative))


def ensure_writable(folder: str) -> None:
    """Creates `folder` and checks that files can be written in it, before any work.

    Raises:
      UserError: the folder cannot be created or written to (the message names it).
    """
    if not is_local(folder):  # an object store's permissions: write and delete a probe
        probe = os.path.join(folder, ".isic-write-probe")
        try:
            write_atomic(probe, b"")
            remove(probe)
        except Exception as e:  # tf.errors.OpError, OSError
            raise UserError(
                f"cannot write to the output folder {folder} ({e}); pass an --output_dir you can write to"
            ) from None
        return
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write to the output folder {folder} ({e.strerror or e}); "
            "pass an --output_dir you can write to"
        ) from None
