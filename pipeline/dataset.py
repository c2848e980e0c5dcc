"""TFRecords -> batches for training and evaluation, one input pipeline per worker.

Training follows STYLE.md point 5, with the shuffle moved before parsing on purpose:
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
yields the same number of batches, `steps_per_epoch(...) * replicas_per_pipeline`.
Evaluation pads the split to a multiple of the global batch with weight-0 examples, so
every replica sees the same number of full batches and the weights sum to the split size.
"""

import os

import numpy as np
import tensorflow as tf

from pipeline import augment as augment_lib
from preprocessing import manifest as manifest_lib
from preprocessing import schema

AUTOTUNE = tf.data.AUTOTUNE
# Traced once per image size and reused: the training dataset is rebuilt every epoch.
_parse_batch = tf.function(schema.parse_batch)
_MAX_OPEN_FILES = 16  # interleave cycle length: files read concurrently per pipeline


def split_size(data_dir: str, split: str) -> int:
    """Number of records of `split` according to the manifest of `data_dir`."""
    manifest = manifest_lib.read_manifest(data_dir)
    if split not in manifest_lib.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {manifest_lib.SPLITS}")
    return int(manifest["counts"].get(split, 0))


def steps_per_epoch(data_dir: str, split: str, batch_size: int) -> int:
    """Training steps in one epoch: full global batches, `split_size // batch_size`."""
    _check_batch_size(batch_size)
    return split_size(data_dir, split) // batch_size


def make_dataset(data_dir: str, split: str, *, batch_size: int, training: bool,
                 seed: int = 0, epoch: int = 0, skip_batches: int = 0,
                 augment: bool = True,
                 input_context: tf.distribute.InputContext | None = None,
                 augment_options: dict | None = None) -> tf.data.Dataset:
    """Builds the dataset of one split for this input pipeline.

    Args:
      data_dir: a finished TFRecord dataset (shards + manifest.json).
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
      augment: training only; apply `augment.augment_batch`.
      input_context: from `strategy.distribute_datasets_from_function`, or None for one
        pipeline feeding one replica.
      augment_options: keyword arguments for `augment.augment_batch` (strengths).
    Returns:
      Training: (images float32 [b, S, S, 3] in [0, 1], masks float32 [b, S, S, 1] in
      {0, 1}). Evaluation: the same plus weights float32 [b] (1 real, 0 padding).
    """
    manifest = manifest_lib.read_manifest(data_dir)
    shards = _list_shards(data_dir, manifest, split)
    num_pipelines, pipeline_id, local_batch = _replica_layout(batch_size, input_context)
    if training:
        return _training_dataset(data_dir, split, manifest, shards, batch_size, local_batch,
                                 num_pipelines, pipeline_id, seed, epoch, skip_batches,
                                 augment, augment_options or {})
    return _evaluation_dataset(manifest, shards, batch_size, local_batch, num_pipelines,
                               pipeline_id)


def read_examples(data_dir: str, split: str, batch_size: int) -> tf.data.Dataset:
    """All examples of `split` in record order, single process, for evaluation tools.

    Yields dicts: "image" float32 [b, S, S, 3] in [0, 1], "mask" float32 [b, S, S, 1],
    "case_id" string [b], "original_size" int64 [b, 2] (height, width), "source_image"
    and "source_mask" string [b]; the last batch may be smaller.
    """
    _check_batch_size(batch_size)
    manifest = manifest_lib.read_manifest(data_dir)
    shards = _list_shards(data_dir, manifest, split)
    size = manifest["image_size"]
    count = sum(records for _, records in shards)

    def parse(serialized):  # string [b] -> dict of [b, ...]
        example = schema.parse_batch(serialized, size)
        example["image"] = tf.cast(example["image"], tf.float32) / 255.0
        example["mask"] = tf.cast(example["mask"], tf.float32)
        return example

    ds = tf.data.TFRecordDataset([path for path, _ in shards])
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    ds = ds.batch(batch_size).map(parse, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _training_dataset(data_dir, split, manifest, shards, batch_size, local_batch,
                      num_pipelines, pipeline_id, seed, epoch, skip_batches, augment,
                      augment_options):
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    count = sum(records for _, records in shards)
    steps = count // batch_size
    if steps == 0:
        raise ValueError(f"split {split!r} of {data_dir} has {count} records, fewer than one "
                         f"global batch of {batch_size}; lower --batch_size")
    # Each pipeline yields exactly this many per-replica batches: `steps` global steps,
    # each taking num_replicas / num_pipelines batches from every pipeline.
    num_batches = steps * (batch_size // num_pipelines) // local_batch
    if not 0 <= skip_batches <= num_batches:
        raise ValueError(f"skip_batches={skip_batches} is outside this pipeline's epoch of "
                         f"{num_batches} batches (split {split!r} of {data_dir})")
    _check_augment_options(augment_options)
    files, num_records, shard_by_data = _plan_sharding(
        shards, num_pipelines, pipeline_id, num_batches * local_batch)
    size = manifest["image_size"]
    order = _epoch_order(_seed_sequence(seed, epoch, pipeline_id, purpose=0), num_records,
                         num_batches, local_batch)
    augment_seed = tf.constant(
        _seed_sequence(seed, epoch, pipeline_id, purpose=1).generate_state(2), tf.int64)

    @tf.autograph.experimental.do_not_convert  # plain graph code: skip autograph's tracing cost
    def parse_and_augment(batch, records):
        """(batch index int64, rows int32 [b]), records string [num_records]
        -> images float32 [b, S, S, 3], masks float32 [b, S, S, 1]."""
        index, rows = batch
        check = tf.debugging.assert_equal(
            tf.size(records), num_records,
            message=f"{data_dir}: the {split} shards hold a different number of records "
                    f"than manifest.json says; rebuild with isic-preprocess --overwrite")
        with tf.control_dependencies([check]):
            example = _parse_batch(tf.gather(records, rows), size)
        if augment:
            # Seeded by the absolute batch index: a skipped-to batch gets the same bits.
            batch_seed = tf.random.experimental.stateless_fold_in(augment_seed, index)
            images, masks = augment_lib.augment_batch(example["image"], example["mask"],
                                                      batch_seed, **augment_options)
        else:
            images = tf.cast(example["image"], tf.float32) / 255.0
            masks = tf.cast(example["mask"], tf.float32)
        return (tf.ensure_shape(images, [local_batch, size, size, 3]),
                tf.ensure_shape(masks, [local_batch, size, size, 1]))

    records = _all_records(files, num_records, num_pipelines, pipeline_id, shard_by_data)
    # Shuffle and skip: the permuted rows of batches skip_batches.. of the epoch. Skipping
    # costs nothing, and batch k keeps its index k for its augmentation seed.
    batches = tf.data.Dataset.from_tensor_slices(
        (np.arange(skip_batches, num_batches, dtype=np.int64), order[skip_batches:]))
    ds = tf.data.Dataset.zip(batches, records)
    ds = ds.map(parse_and_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _epoch_order(seeds: np.random.SeedSequence, num_records: int, num_batches: int,
                 local_batch: int) -> np.ndarray:
    """int32 [num_batches, local_batch]: a seeded permutation of the pipeline's records (as
    positions in read order) cut into full batches; the records left over are different
    ones each epoch. Drawn with NumPy at build time, so the graph only slices it."""
    order = np.random.default_rng(seeds).permutation(num_records)
    return order[:num_batches * local_batch].astype(np.int32).reshape(num_batches, local_batch)


def _all_records(files: list[str], num_records: int, num_pipelines: int, pipeline_id: int,
                 shard_by_data: bool) -> tf.data.Dataset:
    """Endless repeats of ONE element: this pipeline's serialized records, string [n]."""
    records = tf.data.Dataset.from_tensor_slices(files)
    records = records.interleave(tf.data.TFRecordDataset,
                                 cycle_length=min(len(files), _MAX_OPEN_FILES),
                                 num_parallel_calls=AUTOTUNE, deterministic=True)
    if shard_by_data:  # every pipeline reads all files in the same order, keeps 1 in N
        records = records.shard(num_pipelines, pipeline_id)
    # One element holding what a full shuffle buffer would hold, cached so that a second
    # iteration reads no file, then handed to every batch by reference (no copy).
    return records.batch(num_records + 1).cache().repeat()


def _evaluation_dataset(manifest, shards, batch_size, local_batch, num_pipelines, pipeline_id):
    size = manifest["image_size"]
    count = sum(records for _, records in shards)
    padded = -(-count // batch_size) * batch_size  # multiple of the GLOBAL batch
    # A valid record with a zero image and mask: padding goes through the same parse.
    blank = schema.encode_example("", np.zeros([size, size, 3], np.uint8),
                                  np.zeros([size, size], np.uint8), (0, 0), "", "")

    def parse(serialized, weights):  # string [b], float32 [b]
        example = _parse_batch(serialized, size)
        images = tf.cast(example["image"], tf.float32) / 255.0
        masks = tf.cast(example["mask"], tf.float32)
        return (tf.ensure_shape(images, [local_batch, size, size, 3]),
                tf.ensure_shape(masks, [local_batch, size, size, 1]),
                tf.ensure_shape(weights, [local_batch]))

    # Record order (sorted shards, file order): no shuffle, no augmentation.
    ds = tf.data.TFRecordDataset([path for path, _ in shards])
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    ds = ds.map(lambda record: (record, tf.constant(1.0)))
    ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.constant(blank), tf.constant(0.0)))
                        .repeat(padded - count))
    if num_pipelines > 1:  # padded % (num_pipelines * local_batch) == 0: equal full shares
        ds = ds.shard(num_pipelines, pipeline_id)
    ds = ds.batch(local_batch, drop_remainder=True).cache()
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options())


def _list_shards(data_dir: str, manifest: dict, split: str) -> list[tuple[str, int]]:
    """(path, record count) of each shard of `split`, sorted; raises on an empty split."""
    paths = manifest_lib.shard_paths(data_dir, manifest, split)  # checks the files exist
    records = {os.path.join(data_dir, entry["file"]): int(entry["records"])
               for entry in manifest["shards"].get(split, [])}
    shards = [(path, records[path]) for path in paths]
    count = sum(n for _, n in shards)
    if count == 0:
        raise ValueError(
            f"split {split!r} of {data_dir} is empty (0 records in its manifest); rebuild it "
            f"with isic-preprocess --splits giving {split!r} a non-zero fraction")
    if count != manifest["counts"].get(split):
        raise ValueError(f"{data_dir}/manifest.json: counts[{split!r}]={manifest['counts'].get(split)} "
                         f"but its {split} shards list {count} records; rebuild with --overwrite")
    return shards


def _replica_layout(batch_size: int, input_context) -> tuple[int, int, int]:
    """(num_input_pipelines, input_pipeline_id, per-replica batch size)."""
    _check_batch_size(batch_size)
    if input_context is None:
        return 1, 0, batch_size
    replicas = input_context.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"global batch size {batch_size} does not divide by the {replicas} "
                         f"replicas in sync; use a multiple of {replicas}")
    return (input_context.num_input_pipelines, input_context.input_pipeline_id,
            input_context.get_per_replica_batch_size(batch_size))


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


def _check_augment_options(options: dict) -> None:
    allowed = set(augment_lib.augment_batch.__kwdefaults__)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown augment_options {unknown}; expected some of {sorted(allowed)}")


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # We shard explicitly (by file or by record), so tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
