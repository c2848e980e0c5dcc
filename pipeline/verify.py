"""Checking shards against their manifest before a run reads them, and naming the bad one.

Three levels (`--verify_records`):
  size    every shard's TFRecord framing is walked from header to header (12 bytes read
          per record, the payloads skipped): it must hold exactly the manifest's number of
          records and end exactly at the end of the file. Catches truncated or extended
          shards and hand-edited record counts, at almost no cost.
  sha256  size, then every byte hashed and compared with the manifest's sha256 (the
          builder's digest, preprocessing/shards.py): catches any changed byte. The cost
          is one read of the dataset (docs/scaling.md has the measured rates).
  none    nothing: corruption then surfaces as a DataLossError while reading, which
          dataset.reading turns into the same message by hashing the shards afterwards.

A TFRecord is: uint64 little-endian payload length, uint32 masked CRC of the length, the
payload, uint32 masked CRC of the payload. The CRCs are TensorFlow's (CRC32C, not in the
standard library); sha256 covers every byte instead.
"""

import concurrent.futures
import hashlib
import os
import struct

from core import files

# Standard library only at import: launch/training/config.py takes LEVELS from here for
# the --verify_records flag, and `isic-train --help` must not load TensorFlow.
LEVELS = ("sha256", "size", "none")
_HEADER = 12  # length (8) + its CRC (4)
_FOOTER = 4  # payload CRC
_MAX_HASH_THREADS = 4  # hashlib releases the GIL: shards are hashed side by side
_DIGEST_MISMATCH = (
    "its sha256 differs from manifest.json's (a byte changed after the build, "
    "or the manifest entry was edited)"
)


def framing_problem(path: str, expected_records: int, data: bytes | None = None) -> str | None:
    """Why the shard's framing disagrees with `expected_records`, or None if it agrees.

    data: the shard's bytes when already read (remote shards); else the file is read.
    """
    if data is not None:
        return _framing(lambda offset: data[offset : offset + _HEADER], len(data), expected_records)
    with files.open(path, "rb") as f:

        def read_header(offset):
            f.seek(offset)
            return f.read(_HEADER)

        return _framing(read_header, files.getsize(path), expected_records)


def _framing(read_header, size: int, expected_records: int) -> str | None:
    """framing_problem's walk; `read_header(offset)` returns the 12 bytes at `offset`."""
    offset = count = 0
    while offset < size:
        header = read_header(offset)
        if len(header) < _HEADER:
            return f"truncated: it ends inside the header of record {count + 1} (byte {offset} of {size})"
        length = struct.unpack("<Q", header[:8])[0]
        end = offset + _HEADER + length + _FOOTER
        if end > size:
            return (
                f"truncated or damaged: record {count + 1} at byte {offset} claims "
                f"{length} bytes, past the end of the file ({size} bytes)"
            )
        offset, count = end, count + 1
    if count != expected_records:
        return f"it holds {count} records but manifest.json says {expected_records}"
    return None


def problems(shards: list[tuple[str, int, str | None]], level: str) -> dict[str, str]:
    """{path: what is wrong} for the shards (path, records, sha256 or None) at `level`."""
    if level not in LEVELS:
        raise ValueError(f"verify level must be one of {LEVELS}, got {level!r}")
    if level == "none":
        return {}
    local = [s for s in shards if files.is_local(s[0])]
    found = {}
    for path, records, _ in local:
        problem = framing_problem(path, records)
        if problem:
            found[path] = problem
    if level == "sha256":
        found.update(digest_problems([s for s in local if s[0] not in found]))
    remote = [s for s in shards if not files.is_local(s[0])]
    if remote:
        with _pool(len(remote)) as pool:
            checked = pool.map(lambda shard: _remote_problem(shard, level), remote)
            found.update({path: problem for (path, _, _), problem in zip(remote, checked) if problem})
    return found


def _remote_problem(shard: tuple[str, int, str | None], level: str) -> str | None:
    """A remote shard checked from one download: on object storage each seek of the
    framing walk would be a request, so the shard is read whole (in memory, one shard
    per thread) and both checks run on its bytes."""
    path, records, digest = shard
    data = files.read_bytes(path)
    problem = framing_problem(path, records, data)
    if problem is None and level == "sha256" and digest and hashlib.sha256(data).hexdigest() != digest:
        problem = _DIGEST_MISMATCH
    return problem


def _pool(jobs: int) -> concurrent.futures.ThreadPoolExecutor:
    """Threads for hashing or downloading shards side by side (hashlib and gfile release
    the GIL)."""
    return concurrent.futures.ThreadPoolExecutor(max(1, min(_MAX_HASH_THREADS, os.cpu_count() or 1, jobs)))


def digest_problems(shards: list[tuple[str, int, str | None]]) -> dict[str, str]:
    """{path: problem} for the shards whose sha256 differs from the manifest's."""
    from preprocessing import shards as shards_lib

    with_digest = [(path, digest) for path, _, digest in shards if digest]
    with _pool(len(with_digest)) as pool:
        actual = list(pool.map(shards_lib.sha256_file, [path for path, _ in with_digest]))
    return {path: _DIGEST_MISMATCH for (path, digest), got in zip(with_digest, actual) if got != digest}


def listed(data_dir: str, manifest: dict, split_shards) -> list[tuple[str, int, str | None]]:
    """(path, records, sha256 or None) of the shards in `split_shards`, each a split's
    ((path, records), ...) as `records.Records.shards` holds them."""
    digests = {
        os.path.join(data_dir, entry["file"]): entry.get("sha256")
        for entries in manifest.get("shards", {}).values()
        for entry in entries
    }
    return [(path, n, digests.get(path)) for shards in split_shards for path, n in shards]


def report(data_dir: str, manifest: dict, found: dict[str, str], prefix: str = "") -> str:
    """The message for the bad shards `found` ({path: problem}): each named, then the
    command that rebuilds the records. With nothing found (a read failed, yet every
    shard matches), says so."""
    rebuild = rebuild_command(data_dir, manifest)
    prefix = prefix or f"{data_dir}: "
    if not found:
        return (
            f"{prefix}Every shard still matches its sha256 in manifest.json, so the "
            f"storage may have returned bad bytes; if it happens again, rebuild:\n  {rebuild}"
        )
    lines = [f"  {os.path.basename(path)}: {problem}" for path, problem in sorted(found.items())]
    return (
        f"{prefix}{len(found)} shard(s) do not match manifest.json:\n"
        + "\n".join(lines)
        + "\nRebuild the records (the build is deterministic: they come back as the "
        f"manifest describes them):\n  {rebuild}"
    )


def total_bytes(shards: list[tuple[str, int, str | None]]) -> int:
    """Bytes on disk of the shards."""
    return sum(files.getsize(path) for path, _, _ in shards)


def rebuild_command(data_dir: str, manifest: dict) -> str:
    """The isic-preprocess command that rebuilds `data_dir` as its manifest describes it.

    The build is deterministic, so the rebuilt shards are byte for byte those the
    manifest lists (a run interrupted by a bad shard resumes on identical records).
    """
    folders = manifest.get("sources") or ({"": manifest["source"]} if manifest.get("source") else {})
    parts = ["isic-preprocess"]
    for source in folders.values():
        parts += [
            f"--images_dir {source.get('images_dir') or '<images>'}",
            f"--masks_dir {source.get('masks_dir') or '<masks>'}",
        ]
    if not folders:
        parts.append("--data_dir <the original images and masks>")
    parts += [f"--output_dir {data_dir}", f"--image_size {manifest['image_size']}"]
    parts += _option_flags(manifest.get("build", {}))
    return " ".join(parts + ["--overwrite"])


def _option_flags(build: dict) -> list[str]:
    """Flags of the recorded build options that differ from isic-preprocess's defaults."""
    from preprocessing.config import BuildConfig

    default = BuildConfig()
    flags = []
    fractions = build.get("fractions")
    if fractions and tuple(fractions) != default.fractions:
        flags.append("--splits " + ",".join(f"{f:g}" for f in fractions))
    for key in ("seed", "num_shards", "colour_constancy", "colour_constancy_p"):
        if key in build and build[key] != getattr(default, key):
            flags.append(f"--{key} {build[key]}")
    if build.get("skip_bad"):
        flags.append("--skip_bad")
    return flags
