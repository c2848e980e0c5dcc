"""TFRecords -> batches for training and evaluation, one input pipeline per worker.

    records = Records.open(data_dir)   # the manifest, read and checked once
    ds = make_dataset(records, "train", batch_size=32, training=True, seed=0, epoch=e,
                      augment=config, input_context=ctx)

Training follows the usual order (list -> shard -> interleave -> parse -> cache -> shuffle
-> augment -> batch -> prefetch), with the shuffle moved before parsing on purpose:
  list the split's shards (raise on none) -> shard by input pipeline (by file when there
  are enough files, else by record) -> interleave the files (deterministic; parallel reads
  matter on remote storage) -> cache this pipeline's serialized records as one tensor ->
  shuffle (a seeded permutation of (seed, epoch, pipeline), cut into full batches) -> skip
  the batches already trained on -> batch (gather the rows) -> parse (vectorised) ->
  augment (image and mask together, per batch) -> prefetch.
Shuffling indices into the compact serialized records makes resuming at batch k free
(nothing before it is parsed or augmented), and parsing and augmenting whole batches is
what makes the pipeline fast (`schema.parse_batch`, `augment.augment_batch`).

The contract (docs/pipeline.md): a training dataset is exactly one epoch; its order and
augmentation are a pure function of (seed, epoch, input_pipeline_id); batch k is
bit-identical whether reached by iterating or by `skip_batches=k`; every input pipeline
yields the same number of batches, `records.steps_per_epoch(...) * replicas_per_pipeline`.
Evaluation pads the split to a multiple of the global batch with weight-0 examples, so
every replica sees the same number of full batches and the weights sum to the split size.
"""

import contextlib
import dataclasses
import os
import re
import time

import numpy as np
import tensorflow as tf

from core import files as files_lib
from core.errors import UserError
from pipeline import augment as augment_lib
from pipeline import pixels
from pipeline import verify as verify_lib
from pipeline.config import AugmentConfig
from preprocessing import manifest as manifest_lib
from preprocessing import schema

AUTOTUNE = tf.data.AUTOTUNE
# Traced once per image size and reused: the training dataset is rebuilt every epoch.
_parse_batch = tf.function(schema.parse_batch)
_MAX_OPEN_FILES = 16  # interleave cycle length: files read concurrently per pipeline
# The message of the run-time check that the shards hold what the manifest says.
_COUNT_MISMATCH = "shards hold a different number of records than manifest.json says"


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
    # Remote records only: {what was read: string [n] tensor}, see `_read_once`.
    _remote_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

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
        _check_batch_size(batch_size)
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


@contextlib.contextmanager
def reading(records: Records):
    """Turns failures met while reading `records` (a corrupt shard, shards that disagree
    with the manifest) into RecordsError; any other error passes through."""
    try:
        yield
    except tf.errors.DataLossError as e:
        # "{{function_node ...}} corrupted record at 12 [Op:IteratorGetNext]": the middle.
        detail = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", e.message, flags=re.S)
        raise records.corrupt_error(detail) from None
    except tf.errors.InvalidArgumentError as e:
        if _COUNT_MISMATCH not in e.message:
            raise
        raise RecordsError(
            f"{records.data_dir}: the {_COUNT_MISMATCH}; rebuild with isic-preprocess --overwrite"
        ) from None


def make_dataset(
    records: Records,
    split: str,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    augment: AugmentConfig = AugmentConfig(),
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Builds the dataset of one split for this input pipeline.

    Args:
      records: the dataset, from `Records.open`.
      split: "train", "val" or "test".
      batch_size: the GLOBAL batch size; with `input_context` each element is a
        per-replica batch of `batch_size // num_replicas_in_sync`.
      training: True: one shuffled, augmented epoch of (images, masks), full batches only.
        False: every example once, in record order, as (images, masks, weights), padded
        with weight-0 examples to full batches.
      seed, epoch: with the input pipeline id, they fix the order and augmentation.
      skip_batches: training only; start at this batch of the pipeline's epoch (resume).
        A global step consumes num_replicas_in_sync // num_input_pipelines batches of
        each pipeline, so resuming after `step` steps means skip_batches = step * that.
      augment: training only; the options of `augment.augment_batch` (any AugmentConfig,
        e.g. a TrainConfig); `augment.augment` False turns augmentation off.
      input_context: from `strategy.distribute_datasets_from_function`, or None for one
        pipeline feeding one replica.
    Returns:
      Training: (images float32 [b, S, S, 3] in [0, 1], masks float32 [b, S, S, 1] in
      {0, 1}). Evaluation: the same plus weights float32 [b] (1 real, 0 padding).
    """
    layout = _Layout.of(batch_size, input_context)
    if training:
        return _training_dataset(records, split, layout, batch_size, seed, epoch, skip_batches, augment)
    return _evaluation_dataset(records, split, layout, batch_size)


def read_examples(records: Records | str, split: str, batch_size: int) -> tf.data.Dataset:
    """All examples of `split` in record order, single process, for evaluation tools.

    `records` is a `Records` handle, or a dataset directory to open. Yields dicts: "image"
    float32 [b, S, S, 3] in [0, 1], "mask" float32 [b, S, S, 1], and the other features
    of `schema.parse_batch` ("case_id" string [b], "original_size" int64 [b, 2] (height,
    width), "source_image", "source_mask", ...); the last batch may be smaller.
    """
    _check_batch_size(batch_size)
    if isinstance(records, str):
        records = Records.open(records)
    shards = records.files(split)
    size = records.image_size
    ds = tf.data.TFRecordDataset([path for path, _ in shards])
    ds = ds.apply(tf.data.experimental.assert_cardinality(sum(n for _, n in shards)))
    ds = ds.batch(batch_size).map(lambda serialized: _parse(serialized, size), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options())


@tf.autograph.experimental.do_not_convert  # plain graph code: skip autograph's tracing cost
def _parse(serialized, size: int, augment_seed=None, augment: AugmentConfig | None = None):
    """The one parse body: string [b] -> `schema.parse_batch`'s dict with "image" float32
    [b, S, S, 3] in [0, 1] and "mask" float32 [b, S, S, 1] in {0, 1}, augmented together
    (from the parsed uint8 pixels) when `augment_seed` int64 [2] is given."""
    example = _parse_batch(serialized, size)
    if augment_seed is not None:
        example["image"], example["mask"] = augment_lib.augment_batch(
            example["image"], example["mask"], augment_seed, augment
        )
    else:
        example["image"] = pixels.to_unit_range(example["image"])
        example["mask"] = tf.cast(example["mask"], tf.float32)
    return example


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where this input pipeline sits: how many there are, which one, per-replica batch."""

    num_pipelines: int
    pipeline_id: int
    local_batch: int

    @classmethod
    def of(cls, batch_size: int, input_context) -> "_Layout":
        _check_batch_size(batch_size)
        if input_context is None:
            return cls(1, 0, batch_size)
        replicas = input_context.num_replicas_in_sync
        if batch_size % replicas:
            raise ValueError(
                f"global batch size {batch_size} does not divide by the {replicas} "
                f"replicas in sync; use a multiple of {replicas}"
            )
        return cls(
            input_context.num_input_pipelines,
            input_context.input_pipeline_id,
            input_context.get_per_replica_batch_size(batch_size),
        )


def _training_dataset(
    records: Records,
    split: str,
    layout: _Layout,
    batch_size: int,
    seed: int,
    epoch: int,
    skip_batches: int,
    augment: AugmentConfig,
):
    """One shuffled, augmented epoch of this pipeline (see make_dataset)."""
    shards = records.files(split)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    steps = records.steps_per_epoch(split, batch_size)
    # Each pipeline yields exactly this many per-replica batches: `steps` global steps,
    # each taking num_replicas / num_pipelines batches from every pipeline.
    local_batch, pipeline_id = layout.local_batch, layout.pipeline_id
    num_batches = steps * (batch_size // layout.num_pipelines) // local_batch
    if not 0 <= skip_batches <= num_batches:
        raise ValueError(
            f"skip_batches={skip_batches} is outside this pipeline's epoch of "
            f"{num_batches} batches (split {split!r} of {records.data_dir})"
        )
    files, num_records, shard_by_data = _plan_sharding(
        shards, layout.num_pipelines, pipeline_id, num_batches * local_batch
    )
    size = records.image_size
    order = _epoch_order(
        _seed_sequence(seed, epoch, pipeline_id, purpose=0), num_records, num_batches, local_batch
    )
    augment_seed = tf.constant(
        _seed_sequence(seed, epoch, pipeline_id, purpose=1).generate_state(2), tf.int64
    )

    @tf.autograph.experimental.do_not_convert
    def parse_and_augment(batch, serialized):
        """(batch index int64, rows int32 [b]), serialized string [num_records]
        -> images float32 [b, S, S, 3], masks float32 [b, S, S, 1]."""
        index, rows = batch
        check = tf.debugging.assert_equal(
            tf.size(serialized),
            num_records,
            message=f"{records.data_dir}: the {split} {_COUNT_MISMATCH}; rebuild with "
            "isic-preprocess --overwrite",
        )
        # Seeded by the absolute batch index: a skipped-to batch gets the same bits.
        batch_seed = (
            tf.random.experimental.stateless_fold_in(augment_seed, index) if augment.augment else None
        )
        with tf.control_dependencies([check]):
            example = _parse(tf.gather(serialized, rows), size, batch_seed, augment)
        return (
            tf.ensure_shape(example["image"], [local_batch, size, size, 3]),
            tf.ensure_shape(example["mask"], [local_batch, size, size, 1]),
        )

    all_records = _read_once(
        records,
        ("train", tuple(files), layout.num_pipelines, pipeline_id, shard_by_data),
        _all_records(files, num_records, layout.num_pipelines, pipeline_id, shard_by_data),
    )
    # Shuffle and skip: the permuted rows of batches skip_batches.. of the epoch. Skipping
    # costs nothing, and batch k keeps its index k for its augmentation seed.
    batches = tf.data.Dataset.from_tensor_slices(
        (np.arange(skip_batches, num_batches, dtype=np.int64), order[skip_batches:])
    )
    ds = tf.data.Dataset.zip(batches, all_records)
    ds = ds.map(parse_and_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _epoch_order(
    seeds: np.random.SeedSequence, num_records: int, num_batches: int, local_batch: int
) -> np.ndarray:
    """int32 [num_batches, local_batch]: a seeded permutation of the pipeline's records (as
    positions in read order) cut into full batches; the records left over are different
    ones each epoch. Drawn with NumPy at build time, so the graph only slices it."""
    order = np.random.default_rng(seeds).permutation(num_records)
    return order[: num_batches * local_batch].astype(np.int32).reshape(num_batches, local_batch)


def _all_records(
    files: list[str], num_records: int, num_pipelines: int, pipeline_id: int, shard_by_data: bool
) -> tf.data.Dataset:
    """Endless repeats of ONE element: this pipeline's serialized records, string [n]."""
    records = tf.data.Dataset.from_tensor_slices(files)
    records = records.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), _MAX_OPEN_FILES),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shard_by_data:  # every pipeline reads all files in the same order, keeps 1 in N
        records = records.shard(num_pipelines, pipeline_id)
    # One element holding what a full shuffle buffer would hold, cached so that a second
    # iteration reads no file, then handed to every batch by reference (no copy).
    return records.batch(num_records + 1).cache().repeat()


def _read_once(records: Records, key: tuple, ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` (endless repeats of one element, string [n]) read once per run when the records
    are remote.

    The datasets are rebuilt every epoch, and their `cache()` lives as long as one of them:
    locally each epoch's first read comes from the page cache, remotely it would download
    the shards again. So remote records are read once (the same interleaved order), kept
    as a tensor in `records` and handed to every later epoch.
    """
    if files_lib.is_local(records.data_dir):
        return ds
    cache = records._remote_cache
    if key not in cache:
        cache[key] = next(iter(ds))
    return tf.data.Dataset.from_tensors(cache[key]).repeat()


def _evaluation_dataset(records: Records, split: str, layout: _Layout, batch_size: int):
    """Every record of `split` once, padded to full global batches (see make_dataset)."""
    shards = records.files(split)
    size, local_batch = records.image_size, layout.local_batch
    count = sum(n for _, n in shards)
    padded = -(-count // batch_size) * batch_size  # multiple of the GLOBAL batch
    # A valid record with a zero image and mask: padding goes through the same parse.
    blank = schema.encode_example(
        "", np.zeros([size, size, 3], np.uint8), np.zeros([size, size], np.uint8), (0, 0), "", ""
    )

    def parse(serialized, weights):  # string [b], float32 [b]
        example = _parse(serialized, size)
        return (
            tf.ensure_shape(example["image"], [local_batch, size, size, 3]),
            tf.ensure_shape(example["mask"], [local_batch, size, size, 1]),
            tf.ensure_shape(weights, [local_batch]),
        )

    # Record order (sorted shards, file order): no shuffle, no augmentation.
    paths = [path for path, _ in shards]
    if files_lib.is_local(records.data_dir):
        ds = tf.data.TFRecordDataset(paths)
    else:  # read once per run, see _read_once
        ds = (
            _read_once(records, ("eval", split), tf.data.TFRecordDataset(paths).batch(count + 1).repeat())
            .take(1)
            .unbatch()
        )
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    ds = ds.map(lambda record: (record, tf.constant(1.0)))
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors((tf.constant(blank), tf.constant(0.0))).repeat(padded - count)
    )
    if layout.num_pipelines > 1:  # padded % (num_pipelines * local_batch) == 0: equal shares
        ds = ds.shard(layout.num_pipelines, layout.pipeline_id)
    ds = ds.batch(local_batch, drop_remainder=True).cache()
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _plan_sharding(shards, num_pipelines: int, pipeline_id: int, needed: int):
    """Chooses this pipeline's files and whether to shard by record instead of by file.

    By file when there are at least as many shards as pipelines AND every pipeline's
    files hold the `needed` records of its epoch (so no pipeline runs short and stalls
    the others' collectives); otherwise every pipeline reads all files and keeps every
    num_pipelines-th record, which always balances to within one record.
    Returns (files, records this pipeline reads, shard_by_data).
    """
    paths = [path for path, _ in shards]
    if num_pipelines == 1:
        return paths, sum(n for _, n in shards), False
    per_pipeline = [sum(n for _, n in shards[p::num_pipelines]) for p in range(num_pipelines)]
    if len(shards) >= num_pipelines and min(per_pipeline) >= needed:
        return paths[pipeline_id::num_pipelines], per_pipeline[pipeline_id], False
    count = sum(per_pipeline)
    return paths, len(range(pipeline_id, count, num_pipelines)), True


def _seed_sequence(seed: int, epoch: int, pipeline_id: int, purpose: int):
    """Independent random streams, each a pure function of its arguments."""
    return np.random.SeedSequence([seed, epoch, pipeline_id, purpose])


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # We shard explicitly (by file or by record), so tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
