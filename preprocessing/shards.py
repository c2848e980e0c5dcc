"""Writes TFRecord shards: temporary name first, then sha256, fsync and rename.

Shards are named `{split}-{index:05d}-of-{count:05d}.tfrecord` (manifest.shard_name).
A shard is written under `<name>.tmp` and renamed only when complete, so a final name
always holds a complete file; the manifest, written after all shards, is what makes a
dataset directory usable (see preprocessing/manifest.py).
"""

import hashlib
import math
import os
import re

import tensorflow as tf

from preprocessing import manifest as manifest_lib

# Files this builder owns in an output directory (and may delete when rebuilding).
_OWN_FILE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.tmp)?$")
_TMP_SUFFIX = ".tmp"


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

    Only names this builder writes are touched (shards, `*.tfrecord.tmp`, the manifest's
    temporary file); other files are left alone. Returns the deleted names.
    """
    removed = []
    for name in sorted(os.listdir(output_dir)):
        if _OWN_FILE.match(name) or name == manifest_lib.MANIFEST_NAME + _TMP_SUFFIX:
            os.remove(os.path.join(output_dir, name))
            removed.append(name)
    return removed


def sha256_file(path: str) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks (flat memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Writes one shard: `write()` serialized records, then `close()` or `abort()`."""

    def __init__(self, output_dir: str, split: str, index: int, num_shards: int):
        self.name = manifest_lib.shard_name(split, index, num_shards)
        self._path = os.path.join(output_dir, self.name)
        self._tmp = self._path + _TMP_SUFFIX
        self._writer = tf.io.TFRecordWriter(self._tmp)
        self._records = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self._records += 1

    def close(self) -> dict:
        """Finishes the shard; returns its manifest entry {file, records, sha256}."""
        self._writer.close()
        # fsync before the rename: the manifest written later must never point to a
        # shard whose bytes are still only in the page cache when the power fails.
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(self._tmp)
        os.replace(self._tmp, self._path)
        return {"file": self.name, "records": self._records, "sha256": digest}

    def abort(self) -> None:
        """Stops writing and deletes the temporary file."""
        self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
