"""Builds a TFRecord dataset from image/mask folders: what `isic-preprocess` runs.

Order of work (each step is a plain function in its own module):
  pairs.discover_pairs  list files, match IDs, find orphans (no decoding)
  splits.assign_splits  IDs -> train/val/test from the sorted IDs and the seed
  load.load_pair        decode + validate + resize one pair (in worker processes)
  schema.encode_example one tf.train.Example per pair (in this process)
  shards.ShardWriter    shards written one after the other, tmp name -> rename
  manifest.write_manifest  written last: the dataset exists exactly when it does

Bad data: by default every pair is still loaded so that all problems are listed at once,
then BadDataError is raised and nothing is published. With skip_bad, bad pairs are left
out and recorded; if some only show up while decoding, the splits are recomputed over the
good pairs and the shards rewritten (a second pass), so the counts stay exact.
"""

import contextlib
import fcntl
import os
import time

import keras

from preprocessing import load
from preprocessing import manifest as manifest_lib
from preprocessing import pairs as pairs_lib
from preprocessing import parallel
from preprocessing import schema
from preprocessing import shards
from preprocessing import splits

# Bump when a change to this package changes the bytes written for the same inputs, so
# that existing outputs are no longer taken as "already built".
BUILDER_VERSION = 1
_LOCK_NAME = ".isic-preprocess.lock"


class BuildError(Exception):
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


def build_records(images_dir: str, masks_dir: str, output_dir: str, *, image_size: int = 128,
                  fractions=(0.8, 0.1, 0.1), seed: int = 0, num_workers: int | None = None,
                  num_shards: int | None = None, overwrite: bool = False,
                  skip_bad: bool = False, progress: bool = True) -> dict:
    """Builds (or finds already built) the sharded TFRecords of a dataset.

    Args:
      images_dir, masks_dir: the input folders (see pairs.py for the naming rules).
      output_dir: where shards and manifest.json go (created if needed).
      image_size: S; records hold S x S images.
      fractions: (train, val, test) >= 0 summing to 1; see splits.py for the rounding.
      seed: the split seed.
      num_workers: decoding processes; None = all available CPUs, 1 = in this process.
        It never changes the output bytes.
      num_shards: shards per split (capped at its record count); None = automatic
        (shards.default_num_shards).
      overwrite: replace an existing build, even one made with the same options.
      skip_bad: leave bad pairs out (recorded in the manifest) instead of failing.
      progress: show a progress bar and print a summary.
    Returns:
      The manifest (see preprocessing/manifest.py).
    Raises:
      ValueError: invalid option values.
      FileNotFoundError: an input folder is missing.
      BadDataError: bad pairs without skip_bad, or no usable pair at all.
      OutputConflictError: output_dir holds another build and overwrite is False.
    """
    _check_options(image_size, fractions, num_workers, num_shards)
    started = time.time()
    listing = pairs_lib.discover_pairs(images_dir, masks_dir)
    if not listing.pairs and not listing.problems:
        raise BadDataError([], f"no image/mask pairs found: expected <ID>.jpg|.jpeg|.png in "
                               f"{os.path.abspath(images_dir)} and <ID>_segmentation.png in "
                               f"{os.path.abspath(masks_dir)}")
    options = {
        "builder_version": BUILDER_VERSION, "image_size": image_size,
        "fractions": [float(f) for f in fractions], "seed": seed, "num_shards": num_shards,
        "skip_bad": skip_bad, "inputs_sha256": listing.fingerprint,
        "input_files": listing.num_files,
    }
    os.makedirs(output_dir, exist_ok=True)
    with _exclusive(output_dir):
        existing = _finished_build(output_dir, options, overwrite)
        if existing is not None:
            if progress:
                print(f"{output_dir}: already built with these inputs and options "
                      "(pass --overwrite to rebuild)")
            return existing
        # Unpublish first: from here until the new manifest is written, a run killed at
        # any moment leaves no manifest, and the next run starts from scratch.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output_dir, manifest_lib.MANIFEST_NAME))
        shards.remove_build_files(output_dir)
        workers = num_workers or parallel.available_cpus()
        try:
            manifest = _build(listing, output_dir, options, fractions, workers, progress)
        except BaseException:
            shards.remove_build_files(output_dir)
            raise
        manifest["source"] = {"images_dir": os.path.abspath(images_dir),
                              "masks_dir": os.path.abspath(masks_dir)}
        manifest_lib.write_manifest(output_dir, manifest)
    if progress:
        _print_summary(manifest, listing, output_dir, workers, time.time() - started)
    return manifest


def _check_options(image_size, fractions, num_workers, num_shards) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    splits.check_fractions(tuple(fractions))
    for name, value in (("num_workers", num_workers), ("num_shards", num_shards)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")


@contextlib.contextmanager
def _exclusive(output_dir: str):
    """Holds an exclusive lock on output_dir (released by the OS if the process dies)."""
    with open(os.path.join(output_dir, _LOCK_NAME), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another isic-preprocess is writing to {output_dir}; wait for "
                             "it to finish or use another --output_dir") from None
        yield


def _finished_build(output_dir: str, options: dict, overwrite: bool) -> dict | None:
    """Returns the existing manifest if it is this very build, None if there is nothing
    to keep (or overwrite is set); raises OutputConflictError otherwise."""
    path = os.path.join(output_dir, manifest_lib.MANIFEST_NAME)
    if overwrite or not os.path.exists(path):
        return None
    try:
        existing = manifest_lib.read_manifest(output_dir)
    except ValueError as e:
        raise OutputConflictError(f"{e}") from None
    old = existing.get("build", {})
    if old == options:
        missing = [s["file"] for entries in existing["shards"].values() for s in entries
                   if not os.path.isfile(os.path.join(output_dir, s["file"]))]
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


def _build(listing, output_dir, options, fractions, workers, progress) -> dict:
    """Runs the passes described in the module doc; returns the manifest (no 'source')."""
    problems = list(listing.problems)
    good = list(listing.pairs)
    image_size, num_shards, skip_bad = options["image_size"], options["num_shards"], options["skip_bad"]
    if problems and not skip_bad:
        # The build will fail: still decode everything, to list every problem at once.
        order = {"train": [p.case_id for p in good], "val": [], "test": []}
        _, found = _pass(good, order, output_dir, image_size, None, workers, progress, write=False)
        raise BadDataError(sorted(problems + found, key=lambda p: (p.case_id, p.file)))
    while True:
        if not good:
            raise BadDataError(problems, "no usable pair left; the problems were:")
        by_split = splits.assign_splits([p.case_id for p in good], fractions, options["seed"])
        entries, found = _pass(good, by_split, output_dir, image_size, num_shards, workers,
                               progress, write=True)
        if not found:
            break
        shards.remove_build_files(output_dir)
        problems += found
        if not skip_bad:
            raise BadDataError(sorted(problems, key=lambda p: (p.case_id, p.file)))
        bad = {p.case_id for p in found}
        good = [p for p in good if p.case_id not in bad]
        if progress:
            print(f"{len(found)} bad pair(s) found while decoding; recomputing the splits "
                  f"over the {len(good)} good pairs and writing the shards again")
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "image_size": image_size,
        "seed": options["seed"],
        "fractions": dict(zip(splits.SPLITS, options["fractions"])),
        "counts": {s: len(by_split[s]) for s in splits.SPLITS},
        "shards": entries,
        "splits": {case_id: s for s in splits.SPLITS for case_id in by_split[s]},
        "skipped": [p.as_dict() for p in sorted(problems, key=lambda p: (p.case_id, p.file))],
        "ignored_files": len(listing.ignored),
        "build": options,
    }


def _pass(good, by_split, output_dir, image_size, num_shards, workers, progress, write):
    """Decodes the pairs in record order and (if `write`) writes the shards.

    Writing stops at the first bad pair, but decoding goes on so that all problems are
    found. Returns ({split: [shard entries]}, [problems]).
    """
    by_id = {p.case_id: p for p in good}
    plan = _shard_plan(by_split, num_shards)
    tasks = ((by_id[case_id], image_size) for *_, ids in plan for case_id in ids)
    entries = {s: [] for s in splits.SPLITS}
    problems = []
    bar = _Progress(len(good)) if progress else None
    with parallel.ordered_map(load.try_load_pair, tasks, min(workers, len(good))) as results:
        for split, index, count, ids in plan:
            writer = shards.ShardWriter(output_dir, split, index, count) if write and not problems else None
            try:
                for case_id in ids:
                    loaded, problem = next(results)
                    if problem is not None:
                        problems.append(problem)
                        if writer is not None:
                            writer.abort()
                            writer = None
                    elif writer is not None:
                        pair = by_id[case_id]
                        image, mask, original_size = loaded
                        writer.write(schema.encode_example(case_id, image, mask, original_size,
                                                           pair.image_file, pair.mask_file))
                    if bar:
                        bar.step()
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            if writer is not None:
                entries[split].append(writer.close())
    return entries, problems


def _shard_plan(by_split: dict, num_shards: int | None) -> list[tuple[str, int, int, list[str]]]:
    """(split, shard index, shard count, IDs of that shard) for every shard, in write order."""
    plan = []
    for split in splits.SPLITS:
        ids = by_split[split]
        count = min(num_shards, len(ids)) if num_shards else shards.default_num_shards(len(ids))
        start = 0
        for index, size in enumerate(shards.shard_sizes(len(ids), count)):
            plan.append((split, index, count, ids[start:start + size]))
            start += size
    return plan


class _Progress:
    """keras Progbar with a pairs/s rate (its own ETA comes with it)."""

    def __init__(self, total: int):
        self._bar = keras.utils.Progbar(total, stateful_metrics=["pairs/s"], unit_name="pair")
        self._done = 0
        self._start = time.time()

    def step(self) -> None:
        self._done += 1
        rate = self._done / max(time.time() - self._start, 1e-9)
        self._bar.update(self._done, values=[("pairs/s", rate)])


def _print_summary(manifest, listing, output_dir, workers, seconds) -> None:
    counts = manifest["counts"]
    total = sum(counts.values())
    print(f"Built {output_dir}: {total} pairs at {manifest['image_size']}x{manifest['image_size']}"
          f" in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} pairs/s, {workers} worker(s))")
    for split in splits.SPLITS:
        print(f"  {split:5s} {counts[split]:6d} records in {len(manifest['shards'][split])} shard(s)")
    if listing.ignored:
        shown = ", ".join(listing.ignored[:5]) + (", ..." if len(listing.ignored) > 5 else "")
        print(f"  ignored {len(listing.ignored)} file(s) that are not part of a pair: {shown}")
    if manifest["skipped"]:
        print(f"  skipped {len(manifest['skipped'])} bad pair(s) (recorded in manifest.json):")
        for entry in manifest["skipped"]:
            print(f"    {entry['file']}: {entry['reason']}")
