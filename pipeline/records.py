"""A finished TFRecord dataset on disk, its manifest read and checked once: `Records`.

    records = Records.open(data_dir)   # manifest.json: schema, splits, shards, counts
    records.verify(["train", "val"])   # every shard against its size and sha256
    records.steps_per_epoch("train", batch_size=32)

What the files are and whether they are intact, before anything reads them; the tf.data
graph that reads them is pipeline/dataset.py. No TensorFlow here: the shards are checked
with the standard library (pipeline/verify.py).
"""

import dataclasses
import os
import time

import numpy as np

from core.errors import UserError
from pipeline import verify as verify_lib
from preprocessing import manifest as manifest_lib


class RecordsError(UserError, ValueError):
    """A records directory that cannot be read as the manifest describes it."""


@dataclasses.dataclass(frozen=True)
class Records:
    """A finished TFRecord dataset, its manifest read and checked once (`Records.open`).

    Attributes:
      data_dir: the directory (shards + manifest.json).
      image_size: S of every record.
      shards: {split: ((path, records), ...)} sorted by path, for every split.
      preprocessing: manifest["preprocessing"], what was done to the pixels (colour
        constancy); training copies it into the model directory for inference.
      manifest: the whole manifest (sha256 of each shard, how the records were built).
    """

    data_dir: str
    image_size: int
    shards: dict
    preprocessing: dict
    manifest: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    # Remote records only: {what was read: string [n] tensor}, filled by pipeline/dataset.py
    # (`_read_once`) so that later epochs do not download the shards again.
    read_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, data_dir: str) -> "Records":
        """Reads `data_dir/manifest.json`; raises RecordsError if the dataset is unusable
        (no manifest, another schema, a listed shard missing, counts that disagree)."""
        try:
            manifest = manifest_lib.read_manifest(data_dir)
            shards = {split: _split_shards(data_dir, manifest, split) for split in manifest_lib.SPLITS}
        except (OSError, ValueError) as e:
            if isinstance(e, RecordsError):
                raise
            raise RecordsError(str(e)) from e
        size = int(manifest["image_size"])
        # Records from before the field existed had no colour constancy.
        preprocessing = manifest.get("preprocessing") or {"image_size": size, "colour_constancy": "none"}
        return cls(data_dir, size, shards, preprocessing, manifest)

    def size(self, split: str) -> int:
        """Number of records of `split` (0 for an empty split)."""
        if split not in self.shards:
            raise ValueError(f"unknown split {split!r}; expected one of {manifest_lib.SPLITS}")
        return sum(n for _, n in self.shards[split])

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        """Training steps in one epoch: full global batches, `size // batch_size` (>= 1)."""
        check_batch_size(batch_size)
        if not self.size(split):
            raise self._empty(split)
        steps = self.size(split) // batch_size
        if steps == 0:
            raise RecordsError(
                f"split {split!r} of {self.data_dir} has {self.size(split)} records, fewer "
                f"than one global batch of {batch_size}; lower --batch_size"
            )
        return steps

    def files(self, split: str) -> list[tuple[str, int]]:
        """(path, records) of each shard of `split`; raises RecordsError on an empty split."""
        if not self.size(split):
            raise self._empty(split)
        return list(self.shards[split])

    def _empty(self, split: str) -> "RecordsError":
        return RecordsError(
            f"split {split!r} of {self.data_dir} is empty (0 records in its manifest); "
            f"rebuild it with isic-preprocess --splits giving {split!r} a non-zero fraction"
        )

    def verify(self, splits, level: str = "sha256") -> dict:
        """Checks the shards of `splits` against the manifest (pipeline/verify.py levels).

        Returns {"shards": n, "bytes": b, "seconds": s}, for the log.
        Raises:
          RecordsError: a shard disagrees; the message names each bad shard and gives
            the isic-preprocess command that rebuilds the records.
        """
        start = time.perf_counter()
        shards = verify_lib.listed(self.data_dir, self.manifest, [self.shards[s] for s in splits])
        found = verify_lib.problems(shards, level)
        if found:
            raise RecordsError(verify_lib.report(self.data_dir, self.manifest, found))
        return {
            "shards": len(shards),
            "bytes": verify_lib.total_bytes(shards),
            "seconds": time.perf_counter() - start,
        }

    def corrupt_error(self, detail: str) -> "RecordsError":
        """The RecordsError for a read that failed with `detail` (a DataLossError's
        message); every shard is hashed to name the bad one(s)."""
        shards = verify_lib.listed(self.data_dir, self.manifest, list(self.shards.values()))
        return RecordsError(
            verify_lib.report(
                self.data_dir,
                self.manifest,
                verify_lib.digest_problems(shards),
                prefix=f"{self.data_dir}: a shard is corrupt ({detail}). ",
            )
        )


def _split_shards(data_dir: str, manifest: dict, split: str) -> tuple[tuple[str, int], ...]:
    """(path, records) of `split`'s shards, sorted; checks files and counts."""
    paths = manifest_lib.shard_paths(data_dir, manifest, split)  # checks the files exist
    records = {
        os.path.join(data_dir, entry["file"]): int(entry["records"])
        for entry in manifest["shards"].get(split, [])
    }
    shards = tuple((path, records[path]) for path in paths)
    count = sum(n for _, n in shards)
    if count != manifest["counts"].get(split, 0):
        raise RecordsError(
            f"{os.path.join(data_dir, manifest_lib.MANIFEST_NAME)}: counts[{split!r}]="
            f"{manifest['counts'].get(split)} but its {split} shards list {count} records; "
            "rebuild with isic-preprocess --overwrite"
        )
    return shards


def check_batch_size(batch_size) -> None:
    """Raises ValueError unless `batch_size` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
