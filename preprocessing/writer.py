"""The writing half of a build (preprocessing/build.py decides whether one is needed and
passes its plan): decode the pairs in worker processes, encode records, write shards, then
the manifest.
"""

import contextlib
import os
import time

from core import files
from core import progress as progress_lib
from preprocessing import load
from preprocessing import manifest as manifest_lib
from preprocessing import parallel
from preprocessing import schema
from preprocessing import shards
from preprocessing import splits
from preprocessing.config import BuildConfig
from preprocessing.plan import BadDataError
from preprocessing.plan import Plan
from preprocessing.splits import SPLITS


def write_build(plan: Plan, output_dir: str, config: BuildConfig, progress: bool) -> dict:
    """Replaces whatever build `output_dir` holds with `plan`'s; returns the new manifest.

    Raises:
      BadDataError: bad pairs without skip_bad, or no usable pair at all.
    """
    started = time.time()
    # Unpublish first: from here until the new manifest is written, a run killed at any
    # moment leaves no manifest, and the next run starts from scratch.
    with contextlib.suppress(FileNotFoundError):
        files.remove(os.path.join(output_dir, manifest_lib.MANIFEST_NAME))
    shards.remove_build_files(output_dir)
    workers = config.num_workers or parallel.available_cpus()
    try:
        by_split, entries, problems = _passes(plan, output_dir, config, workers, progress)
    except BaseException:
        shards.remove_build_files(output_dir)
        raise
    manifest = make_manifest(plan, config, by_split, entries, problems)
    manifest_lib.write_manifest(output_dir, manifest)
    if progress:
        _print_summary(manifest, plan, output_dir, workers, time.time() - started)
    return manifest


def _passes(plan, output_dir, config, workers, progress):
    """Runs the passes described in build.py's doc; returns (by_split, entries, problems)."""
    problems = list(plan.listing.problems)
    good = list(plan.listing.pairs)
    if problems and not config.skip_bad:
        # The build will fail: still decode everything, to list every problem at once.
        order = {"train": [p.case_id for p in good], "val": [], "test": []}
        _, found = run_pass(good, order, output_dir, config, workers, write=False, progress=progress)
        raise BadDataError(_sorted(problems + found))
    while True:
        if not good:
            raise BadDataError(problems, "no usable pair left; the problems were:")
        by_split = splits.assign_splits([p.case_id for p in good], config.fractions, config.seed)
        entries, found = run_pass(good, by_split, output_dir, config, workers, write=True, progress=progress)
        if not found:
            return by_split, entries, _sorted(problems)
        shards.remove_build_files(output_dir)
        problems += found
        if not config.skip_bad:
            raise BadDataError(_sorted(problems))
        bad = {p.case_id for p in found}
        good = [p for p in good if p.case_id not in bad]
        if progress:
            print(
                f"{len(found)} bad pair(s) found while decoding; recomputing the splits "
                f"over the {len(good)} good pairs and writing the shards again"
            )


def _sorted(problems: list) -> list:
    return sorted(problems, key=lambda p: (p.case_id, p.file))


class _BadPair(Exception):
    """Raised into a shard's writing when a pair fails to load: the shard is discarded."""


def run_pass(pairs, by_split, output_dir, config, workers, *, write, progress):
    """Decodes the pairs in record order and (if `write`) writes the shards.

    Writing stops at the first bad pair, but decoding goes on so that all problems are
    found. Returns ({split: [shard entries]}, [problems]).
    """
    by_id = {p.case_id: p for p in pairs}
    plan = shard_plan(by_split, config.num_shards)
    tasks = (load_task(by_id[case_id], config) for *_, ids in plan for case_id in ids)
    entries = {split: [] for split in SPLITS}
    problems = []
    bar = progress_lib.Progress(len(pairs), unit="pair", show=progress)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        bar.advance(done)

    with parallel.ordered_map(load.try_load_pair, tasks, min(workers, len(pairs))) as results:
        for split, index, count, ids in plan:
            pending = iter(ids)  # shared: what the shard's writing did not take is drained below
            if write and not problems:
                with contextlib.suppress(_BadPair):
                    records = _records(pending, by_id, results, problems, step)
                    entries[split].append(shards.write_shard(output_dir, split, index, count, records))
            for _ in pending:  # after a bad pair: decoded only to find the other problems
                _, problem = next(results)
                step()
                if problem is not None:
                    problems.append(problem)
    return entries, problems


def load_task(pair, config: BuildConfig) -> tuple:
    """The argument of load.try_load_pair for one pair (picklable: it goes to a worker)."""
    return (pair, config.image_size, config.colour)


def _records(pending, by_id, results, problems, step):
    """Yields the serialized records of the IDs taken from `pending`; raises _BadPair (after
    recording its problem) at the first pair that failed to load."""
    for case_id in pending:
        loaded, problem = next(results)
        step()
        if problem is not None:
            problems.append(problem)
            raise _BadPair(case_id)
        pair = by_id[case_id]
        image, mask, original_size = loaded
        yield schema.encode_example(
            case_id, image, mask, original_size, pair.image_file, pair.mask_file, pair.source
        )


def shard_plan(by_split: dict, num_shards: int | None) -> list[tuple[str, int, int, list[str]]]:
    """(split, shard index, shard count, IDs of that shard) for every shard, in write order."""
    plan = []
    for split in SPLITS:
        ids = by_split[split]
        count = min(num_shards, len(ids)) if num_shards else shards.default_num_shards(len(ids))
        start = 0
        for index, size in enumerate(shards.shard_sizes(len(ids), count)):
            plan.append((split, index, count, ids[start : start + size]))
            start += size
    return plan


def make_manifest(plan: Plan, config: BuildConfig, by_split: dict, entries: dict, problems: list) -> dict:
    """The manifest of a finished build (fields: preprocessing/manifest.py).

    by_split: {split: [IDs in record order]}; entries: {split: [write_shard's entries]};
    problems: the pairs.Problem of the pairs left out.
    """
    source_of = {p.case_id: p.source for p in plan.listing.pairs}
    sources = {
        s.name: {
            "images_dir": s.images_dir,
            "masks_dir": s.masks_dir,
            "counts": {split: sum(source_of[i] == s.name for i in by_split[split]) for split in SPLITS},
        }
        for s in plan.sources
    }
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "image_size": config.image_size,
        "seed": config.seed,
        "fractions": dict(zip(SPLITS, plan.options["fractions"])),
        "counts": {split: len(by_split[split]) for split in SPLITS},
        "shards": entries,
        "splits": {case_id: split for split in SPLITS for case_id in by_split[split]},
        "skipped": [p.as_dict() for p in problems],
        "ignored_files": len(plan.listing.ignored),
        "sources": sources,
        "preprocessing": {"image_size": config.image_size, **config.colour.to_dict()},
        "build": plan.options,
    }
    if len(plan.sources) == 1:  # the field single-folder builds have always had
        manifest["source"] = {
            "images_dir": plan.sources[0].images_dir,
            "masks_dir": plan.sources[0].masks_dir,
        }
    return manifest


def _print_summary(manifest, plan, output_dir, workers, seconds) -> None:
    counts, ignored = manifest["counts"], plan.listing.ignored
    total = sum(counts.values())
    print(
        f"Built {output_dir}: {total} pairs at {manifest['image_size']}x{manifest['image_size']}"
        f" in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} pairs/s, {workers} worker(s))"
    )
    for split in SPLITS:
        print(f"  {split:5s} {counts[split]:6d} records in {len(manifest['shards'][split])} shard(s)")
    if len(manifest["sources"]) > 1:
        for name, source in manifest["sources"].items():
            per_split = ", ".join(f"{s} {n}" for s, n in source["counts"].items())
            print(f"  from {name}: {per_split} ({source['images_dir']})")
    if ignored:
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        print(f"  ignored {len(ignored)} file(s) that are not part of a pair: {shown}")
    if manifest["skipped"]:
        print(f"  skipped {len(manifest['skipped'])} bad pair(s) (recorded in manifest.json):")
        for entry in manifest["skipped"]:
            print(f"    {entry['file']}: {entry['reason']}")
