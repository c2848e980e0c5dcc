"""Builds a TFRecord dataset from image/mask folders: what `isic-preprocess` runs.

Order of work (each step is a plain function in its own module):
  pairs.name_sources    name the input folders (recorded in every record)
  pairs.discover_sources  list files, match IDs, find orphans and clashes (no decoding)
  build._finished_build   the output already holds this very build: return it
  -- TensorFlow is first imported here, so the check above stays fast --
  splits.assign_splits  IDs -> train/val/test from the union of IDs and the seed
  load.load_pair        decode + validate + resize one pair (in worker processes)
  schema.encode_example one tf.train.Example per pair (in this process)
  shards.write_shard    shards written one after the other, tmp name -> rename
  manifest.write_manifest  written last: the dataset exists exactly when it does
(the steps after the check are in preprocessing/writer.py).

Bad data: by default every pair is still loaded so that all problems are listed at once,
then BadDataError is raised and nothing is published. With skip_bad, bad pairs are left
out and recorded; if some only show up while decoding, the splits are recomputed over the
good pairs and the shards rewritten (a second pass), so the counts stay exact.
"""

import contextlib
import dataclasses
import os

from preprocessing import files
from preprocessing import locks
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing.config import BuildConfig
from preprocessing.options import UserError

# Bump when a change to this package changes the bytes written for the same inputs, so
# that existing outputs are no longer taken as "already built". (2: records name their
# source folder; colour constancy.)
BUILDER_VERSION = 2
_LOCK_NAME = ".isic-preprocess.lock"


class BuildError(UserError):
    """A build that cannot proceed; the message says why and what to do."""


class BadDataError(BuildError):
    """Bad input pairs; `problems` lists them (pairs.Problem)."""

    def __init__(self, problems: list, headline: str | None = None):
        self.problems = list(problems)
        headline = headline or (
            f"{len(self.problems)} bad pair(s); fix or remove them, or pass --skip_bad "
            "to leave them out. Nothing was written.")
        super().__init__("\n".join([headline] + ["  " + p.line() for p in self.problems]))


class OutputConflictError(BuildError):
    """The output directory holds a build made with other options or inputs."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a build will read and the options that determine its bytes (no decoding yet).

    options: the manifest's "build" field; equal options mean byte-equal outputs.
    """
    sources: list[pairs_lib.Source]
    listing: pairs_lib.Listing
    options: dict


def plan_build(inputs, config: BuildConfig) -> Plan:
    """Names and lists the input folders [(images_dir, masks_dir), ...] and states the options.

    Raises:
      FileNotFoundError: an input folder is missing.
      UserError: a folder given twice, a folder without pairs, an ID in several folders.
    """
    sources = pairs_lib.name_sources(inputs)
    listing = pairs_lib.discover_sources(sources)
    options = {
        "builder_version": BUILDER_VERSION, "image_size": config.image_size,
        "fractions": [float(f) for f in config.fractions], "seed": config.seed,
        "num_shards": config.num_shards, "skip_bad": config.skip_bad,
        **config.colour.to_dict(),
        "sources": [s.name for s in sources],
        "inputs_sha256": listing.fingerprint, "input_files": listing.num_files,
    }
    return Plan(sources, listing, options)


def build_records(inputs, output_dir: str, config: BuildConfig = BuildConfig(), *,
                  progress: bool = True) -> dict:
    """Builds (or finds already built) the sharded TFRecords of one or more input folders.

    Args:
      inputs: [(images_dir, masks_dir), ...], one per input folder (see pairs.py for the
        naming rules; pairs.input_dirs resolves the command's flags to this).
      output_dir: where shards and manifest.json go (created if needed).
      config: the build options (BuildConfig; `num_workers` never changes the bytes).
      progress: show a progress bar and print a summary.
    Returns:
      The manifest (see preprocessing/manifest.py).
    Raises:
      FileNotFoundError: an input folder is missing.
      BadDataError: bad pairs without skip_bad, or no usable pair at all.
      OutputConflictError: output_dir holds another build and overwrite is False.
      UserError: other problems with the inputs (see plan_build).
    """
    plan = plan_build(inputs, config)
    files.makedirs(output_dir)
    with _exclusive(output_dir):
        existing = None if config.overwrite else _finished_build(output_dir, plan.options)
        if existing is not None:
            if progress:
                print(already_built_message(output_dir))
            return existing
        # Imported here, not at the top: it loads TensorFlow, which a re-run on a finished
        # build does not need (and spawn workers re-import the command, which imports us).
        from preprocessing import writer  # pylint: disable=import-outside-toplevel
        return writer.write_build(plan, output_dir, config, progress)


def existing_build(inputs, output_dir: str, config: BuildConfig) -> dict | None:
    """The manifest of `output_dir` if it holds this very build, else None (no TensorFlow).

    `isic-preprocess` asks this first, so that a re-run on a finished build returns, and
    bad inputs or a conflicting output are reported, before TensorFlow is imported.
    Returns None with `overwrite`.
    Raises:
      OutputConflictError: output_dir holds another build and overwrite is False.
      and what plan_build raises.
    """
    plan = plan_build(inputs, config)
    if config.overwrite or not files.isdir(output_dir):
        return None
    return _finished_build(output_dir, plan.options)


def already_built_message(output_dir: str) -> str:
    """What a run prints when it finds its build already done."""
    return f"{output_dir}: already built with these inputs and options (pass --overwrite to rebuild)"


@contextlib.contextmanager
def _exclusive(output_dir: str):
    """Holds the exclusive lock on output_dir (preprocessing/locks.py: released by the OS
    if the process dies; a second build is refused with the holder's pid, host and start)."""
    try:
        with locks.exclusive(output_dir, _LOCK_NAME, "isic-preprocess",
                             advice="wait for it to finish or use another --output_dir"):
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
        missing = [s["file"] for entries in existing["shards"].values() for s in entries
                   if not files.isfile(os.path.join(output_dir, s["file"]))]
        if missing:
            raise OutputConflictError(f"{path} lists shards that are missing ({missing[:3]}); "
                                      "rerun with --overwrite to rebuild")
        return existing
    changes = []
    for key in sorted(set(old) | set(options)):
        if key == "inputs_sha256" and old.get(key) != options[key]:
            changes.append(f"the input files changed (name, size or mtime; "
                           f"{old.get('input_files')} files then, {options['input_files']} now)")
        elif key not in ("inputs_sha256", "input_files") and old.get(key) != options.get(key):
            changes.append(f"{key}: {old.get(key)!r} in the existing build, {options.get(key)!r} now")
    raise OutputConflictError(
        f"{output_dir} already holds a build made differently: " + "; ".join(changes)
        + ". Rerun with --overwrite to replace it, or choose another --output_dir.")
