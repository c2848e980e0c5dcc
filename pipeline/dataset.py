"""TFRecords -> batches for training and evaluation, one input pipeline per worker.

    records = Records.open(data_dir)   # the manifest, read and checked once (records.py)
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
import re

import numpy as np
import tensorflow as tf

from core import files as files_lib
from pipeline import augment as augment_lib
from pipeline import pixels
from pipeline.config import AugmentConfig
from pipeline.records import Records
from pipeline.records import RecordsError
from pipeline.records import check_batch_size
from preprocessing import schema

AUTOTUNE = tf.data.AUTOTUNE
# Traced once per image size and reused: the training dataset is rebuilt every epoch.
_parse_batch = tf.function(schema.parse_batch)
_MAX_OPEN_FILES = 16  # interleave cycle length: files read concurrently per pipeline
# The message of the run-time check that the shards hold what the manifest says.
_COUNT_MISMATCH = "shards hold a different number of records than manifest.json says"


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
    check_batch_size(batch_size)
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
        check_batch_size(batch_size)
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
    local_batch, pipeline_id = layout.local_batch, layout.pipeline_id
    num_batches = _pipeline_batches(records, split, layout, batch_size, skip_batches)
    files, num_records, shard_by_data = _plan_sharding(
        shards, layout.num_pipelines, pipeline_id, num_batches * local_batch
    )
    order = _epoch_order(
        _seed_sequence(seed, epoch, pipeline_id, purpose=0), num_records, num_batches, local_batch
    )
    augment_seed = tf.constant(
        _seed_sequence(seed, epoch, pipeline_id, purpose=1).generate_state(2), tf.int64
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
    parse_and_augment = _batch_parser(records, split, local_batch, num_records, augment_seed, augment)
    ds = ds.map(parse_and_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _pipeline_batches(
    records: Records, split: str, layout: _Layout, batch_size: int, skip_batches: int
) -> int:
    """The per-replica batches this pipeline yields in one epoch; checks `skip_batches`."""
    steps = records.steps_per_epoch(split, batch_size)
    # Each pipeline yields exactly this many per-replica batches: `steps` global steps,
    # each taking num_replicas / num_pipelines batches from every pipeline.
    num_batches = steps * (batch_size // layout.num_pipelines) // layout.local_batch
    if not 0 <= skip_batches <= num_batches:
        raise ValueError(
            f"skip_batches={skip_batches} is outside this pipeline's epoch of "
            f"{num_batches} batches (split {split!r} of {records.data_dir})"
        )
    return num_batches


def _batch_parser(records: Records, split: str, local_batch: int, num_records: int, augment_seed, augment):
    """The map function of the training graph: (batch index int64, rows int32 [b]),
    serialized string [num_records] -> images float32 [b, S, S, 3], masks float32
    [b, S, S, 1]; it checks that the shards held `num_records` records."""
    size = records.image_size

    @tf.autograph.experimental.do_not_convert
    def parse_and_augment(batch, serialized):
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

    return parse_and_augment


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
    cache = records.read_cache
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


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # We shard explicitly (by file or by record), so tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
