"""Writes TFRecord shards: temporary name first, then fsync, sha256 and rename (on remote
storage: a local temporary file, then one upload).

Shards are named `{split}-{index:05d}-of-{count:05d}.tfrecord` (manifest.shard_name).
A shard is written under its temporary name (`train-00000-of-00008.tmp.tfrecord`,
files.temporary_name) and renamed only when complete, so a final name always holds a
complete file; the manifest, written after all shards, is what makes a dataset directory
usable (see preprocessing/manifest.py).
"""

import hashlib
import math
import os
import re
from typing import Iterable

from core import files
from preprocessing import manifest as manifest_lib
from preprocessing import tfrecord

# Files this builder owns in an output directory (and may delete when rebuilding): shards,
# their temporary files, and the manifest's temporary file.
_OWN_FILE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}(\.tmp)?\.tfrecord$")


def default_num_shards(num_records: int) -> int:
    """Shards for a split of `num_records`: min(16, max(8, ceil(n / 64))), capped at n.

    At least 8 shards whenever there are 8 records, so up to 8 workers can each read
    their own files; more shards (up to 16) once a split passes 512 records.
    """
    if num_records <= 0:
        return 0
    return min(num_records, 16, max(8, math.ceil(num_records / 64)))


def shard_sizes(num_records: int, num_shards: int) -> list[int]:
    """Records per shard, as equal as possible, the larger shards first."""
    if num_records == 0:
        return []
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    base, extra = divmod(num_records, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


def remove_build_files(output_dir: str) -> list[str]:
    """Deletes the shards and temporary files of earlier builds in `output_dir`.

    Only names this builder writes are touched; other files are left alone. Returns the
    deleted names.
    """
    manifest_tmp = files.temporary_name(manifest_lib.MANIFEST_NAME)
    removed = []
    for name in sorted(files.listdir(output_dir)):
        if _OWN_FILE.match(name) or name == manifest_tmp:
            files.remove(os.path.join(output_dir, name))
            removed.append(name)
    return removed


def sha256_file(path: str) -> str:
    """sha256 hex digest of a file, read in blocks (flat memory): 1 MiB locally, 16 MiB
    from remote storage, where each read is a request."""
    digest = hashlib.sha256()
    size = (1 << 20) if files.is_local(path) else (16 << 20)
    with files.open(path, "rb") as f:
        for block in iter(lambda: f.read(size), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(output_dir: str, split: str, index: int, num_shards: int, records: Iterable[bytes]) -> dict:
    """Writes one shard from serialized records; returns its manifest entry.

    The records are consumed lazily (one in memory at a time) and framed as TFRecords
    (preprocessing/tfrecord.py); the sha256 is taken from the bytes as they are written.
    If iterating the records raises, the temporary file is deleted, the shard's name is
    untouched and the error propagates.
    Returns:
      {"file": name, "records": n, "sha256": hex digest}.
    """
    name = manifest_lib.shard_name(split, index, num_shards)
    count, digest = 0, hashlib.sha256()
    # fsync before the rename: the manifest written later must never point to a shard
    # whose bytes are still only in the page cache when the power fails. On remote storage
    # the shard is written locally and uploaded whole (files.atomic_path).
    with files.atomic_path(os.path.join(output_dir, name), fsync=True) as tmp:
        with open(tmp, "wb") as f:  # local (atomic_path stages remote outputs locally)
            for record in records:
                framed = tfrecord.frame(record)
                f.write(framed)
                digest.update(framed)
                count += 1
    return {"file": name, "records": count, "sha256": digest.hexdigest()}
