"""Builds a TFRecord dataset from image/mask folders: what `isic-preprocess` runs.

Order of work (each step is a plain function in its own module):
  plan.plan_build       name the input folders (recorded in every record), list files,
                        match IDs, find orphans and clashes (no decoding), state the options
  build._finished_build   the output already holds this very build: return it
  splits.assign_splits  IDs -> train/val/test from the union of IDs and the seed
  load.load_pair        decode + validate + resize one pair (in worker processes)
  schema.encode_example one serialized tf.train.Example per pair (in this process)
  shards.write_shard    shards written one after the other, tmp name -> rename
  manifest.write_manifest  written last: the dataset exists exactly when it does
(the steps after the check are in preprocessing/writer.py, which gets the plan). The plan
is made once per build. No step imports TensorFlow (records: preprocessing/tfrecord.py).

Bad data: by default every pair is still loaded so that all problems are listed at once,
then BadDataError is raised and nothing is published. With skip_bad, bad pairs are left
out and recorded; if some only show up while decoding, the splits are recomputed over the
good pairs and the shards rewritten (a second pass), so the counts stay exact.
"""

import contextlib
import os

from core import files
from core import locks
from preprocessing import manifest as manifest_lib
from preprocessing import writer
from preprocessing.config import BuildConfig

# The errors a build raises, named here for callers (`build.BadDataError`).
from preprocessing.plan import BadDataError  # noqa: F401
from preprocessing.plan import BuildError
from preprocessing.plan import OutputConflictError
from preprocessing.plan import plan_build

_LOCK_NAME = ".isic-preprocess.lock"


def build_records(
    inputs, output_dir: str, config: BuildConfig = BuildConfig(), *, progress: bool = True
) -> dict:
    """Builds (or finds already built) the sharded TFRecords of one or more input folders.

    Args:
      inputs: [(images_dir, masks_dir), ...], one per input folder (see pairs.py for the
        naming rules; pairs.input_dirs resolves the command's flags to this).
      output_dir: where shards and manifest.json go (created if needed).
      config: the build options (BuildConfig; `num_workers` never changes the bytes).
      progress: show a progress bar and print a summary.
    Returns:
      The manifest (see preprocessing/manifest.py); a re-run on a finished build returns
      its manifest at once (and with `progress` says so).
    Raises:
      FileNotFoundError: an input folder is missing.
      BadDataError: bad pairs without skip_bad, or no usable pair at all.
      OutputConflictError: output_dir holds another build and overwrite is False.
      BuildError: another build holds output_dir.
      UserError: other problems with the inputs (see plan.plan_build).
    """
    plan = plan_build(inputs, config)
    files.makedirs(output_dir)
    with _exclusive(output_dir):
        existing = None if config.overwrite else _finished_build(output_dir, plan.options)
        if existing is not None:
            if progress:
                print(
                    f"{output_dir}: already built with these inputs and options (pass --overwrite to rebuild)"
                )
            return existing
        return writer.write_build(plan, output_dir, config, progress)


@contextlib.contextmanager
def _exclusive(output_dir: str):
    """Holds the exclusive lock on output_dir (core/locks.py: released by the OS
    if the process dies; a second build is refused with the holder's pid, host and start)."""
    try:
        with locks.exclusive(
            output_dir,
            _LOCK_NAME,
            "isic-preprocess",
            advice="wait for it to finish or use another --output_dir",
        ):
            yield
    except locks.LockedError as e:
        raise BuildError(str(e)) from None


def _finished_build(output_dir: str, options: dict) -> dict | None:
    """Returns the existing manifest if it is this very build, None if there is none;
    raises OutputConflictError if it is another build."""
    path = os.path.join(output_dir, manifest_lib.MANIFEST_NAME)
    if not files.exists(path):
        return None
    try:
        existing = manifest_lib.read_manifest(output_dir)
    except ValueError as e:
        raise OutputConflictError(f"{e}") from None
    old = existing.get("build", {})
    if old == options:
        missing = [
            s["file"]
            for entries in existing["shards"].values()
            for s in entries
            if not files.isfile(os.path.join(output_dir, s["file"]))
        ]
        if missing:
            raise OutputConflictError(
                f"{path} lists shards that are missing ({missing[:3]}); rerun with --overwrite to rebuild"
            )
        return existing
    changes = []
    for key in sorted(set(old) | set(options)):
        if key == "inputs_sha256" and old.get(key) != options[key]:
            changes.append(
                f"the input files changed (name, size or mtime; "
                f"{old.get('input_files')} files then, {options['input_files']} now)"
            )
        elif key not in ("inputs_sha256", "input_files") and old.get(key) != options.get(key):
            changes.append(f"{key}: {old.get(key)!r} in the existing build, {options.get(key)!r} now")
    raise OutputConflictError(
        f"{output_dir} already holds a build made differently: "
        + "; ".join(changes)
        + ". Rerun with --overwrite to replace it, or choose another --output_dir."
    )
