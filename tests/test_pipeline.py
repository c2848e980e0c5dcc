"""make_dataset / read_examples on tiny synthetic records: shapes, determinism, resume,
sharding across input pipelines, evaluation padding and clear errors."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from pipeline import dataset
from pipeline import records as records_lib
from pipeline.config import AugmentConfig
from preprocessing import manifest as manifest_lib
from preprocessing import schema
from preprocessing import tiny_records

NO_AUGMENT = AugmentConfig(augment=False)

SIZE = 16
BATCH = 8  # with SIZE, the augmentation shape shared with test_augment (one XLA compile)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train 32 records in 4 shards, val 7 in 2 shards, test empty."""
    out = str(tmp_path_factory.mktemp("records"))
    tiny_records.write_records(out, {"train": 32, "val": 7, "test": 0}, size=SIZE, shards_per_split=4)
    return records_lib.Records.open(out)


@pytest.fixture(scope="module")
def one_shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one_shard"))
    tiny_records.write_records(out, {"train": 32, "val": 4}, size=SIZE, shards_per_split=1)
    return records_lib.Records.open(out)


def _context(pipelines, pipeline_id, replicas=None):
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=replicas or pipelines,
    )


def _batches(ds):
    return [tuple(t.numpy() for t in element) for element in ds]


def _case_ids_by_image(data_dir, split):
    """Maps raw image bytes (float [0,1] -> uint8) to case IDs, to identify unaugmented examples."""
    table = {}
    for example in dataset.read_examples(data_dir, split, batch_size=16):
        for image, case_id in zip(example["image"].numpy(), example["case_id"].numpy()):
            table[np.round(image * 255).astype(np.uint8).tobytes()] = case_id.decode()
    return table


def _case_ids(batches, table, weights=None):
    ids = []
    for images, *rest in batches:
        keep = rest[1] > 0 if weights else np.ones(len(images), bool)
        ids += [table[np.round(image * 255).astype(np.uint8).tobytes()] for image in images[keep]]
    return ids


def test_training_batches_have_static_shapes_and_valid_values(data_dir):
    ds = dataset.make_dataset(data_dir, "train", batch_size=BATCH, training=True)
    images_spec, masks_spec = ds.element_spec
    assert images_spec.shape == (BATCH, SIZE, SIZE, 3) and images_spec.dtype == tf.float32
    assert masks_spec.shape == (BATCH, SIZE, SIZE, 1) and masks_spec.dtype == tf.float32
    batches = _batches(ds)
    assert len(batches) == len(ds) == data_dir.steps_per_epoch("train", BATCH) == 4
    for images, masks in batches:
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert set(np.unique(masks)) <= {0.0, 1.0}


def test_training_order_and_augmentation_are_a_pure_function_of_seed_and_epoch(data_dir):
    def run(**kwargs):
        return _batches(dataset.make_dataset(data_dir, "train", batch_size=BATCH, training=True, **kwargs))

    first = run(seed=3, epoch=1)
    ds = dataset.make_dataset(data_dir, "train", batch_size=BATCH, training=True, seed=3, epoch=1)
    for again in (run(seed=3, epoch=1), _batches(ds), _batches(ds)):  # rebuilt, iterated twice
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    for other in (run(seed=3, epoch=2), run(seed=4, epoch=1)):
        assert not np.array_equal(first[0][0], other[0][0])


def test_an_epoch_is_each_example_once_in_an_epoch_dependent_order(data_dir):
    table = _case_ids_by_image(data_dir, "train")
    orders = [
        _case_ids(
            _batches(
                dataset.make_dataset(
                    data_dir, "train", batch_size=BATCH, training=True, epoch=e, augment=NO_AUGMENT
                )
            ),
            table,
        )
        for e in range(2)
    ]
    for order in orders:
        assert sorted(order) == sorted(table.values())  # 32 records, 4 full batches: all
    assert orders[0] != orders[1]


def test_skip_batches_gives_the_same_batches_as_dropping_them(data_dir):
    kwargs = dict(batch_size=BATCH, training=True, seed=5, epoch=2)
    full = _batches(dataset.make_dataset(data_dir, "train", **kwargs))
    resumed = dataset.make_dataset(data_dir, "train", skip_batches=2, **kwargs)
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], _batches(resumed), strict=True):
        np.testing.assert_array_equal(a[0], b[0])  # bit-identical, augmentation included
        np.testing.assert_array_equal(a[1], b[1])
    assert _batches(dataset.make_dataset(data_dir, "train", skip_batches=len(full), **kwargs)) == []


def _ids_in_files(paths) -> set:
    """The case IDs of the records in these shard files."""
    ids = set()
    for batch in tf.data.TFRecordDataset(paths).batch(64):
        ids |= {c.decode() for c in schema.parse_batch(batch, SIZE)["case_id"].numpy()}
    return ids


def _pipeline_ids(records, batch_size, pipelines, split="train"):
    """The case IDs each of `pipelines` input pipelines yields in one unaugmented epoch."""
    table = _case_ids_by_image(records, split)
    halves = []
    for pipeline_id in range(pipelines):
        ds = dataset.make_dataset(
            records,
            split,
            batch_size=batch_size,
            training=True,
            augment=NO_AUGMENT,
            input_context=_context(pipelines, pipeline_id),
        )
        assert ds.element_spec[0].shape == (batch_size // pipelines, SIZE, SIZE, 3)  # per replica
        batches = _batches(ds)
        assert len(batches) == records.steps_per_epoch(split, batch_size)
        halves.append(set(_case_ids(batches, table)))
    return halves, set(table.values())


@pytest.mark.parametrize("fixture", ["data_dir", "one_shard_dir"])
def test_two_input_pipelines_get_disjoint_halves_of_the_split(fixture, request):
    data_dir = request.getfixturevalue(fixture)
    halves, everything = _pipeline_ids(data_dir, BATCH, 2)
    assert not halves[0] & halves[1]
    assert halves[0] | halves[1] == everything
    files = [path for path, _ in data_dir.files("train")]
    if len(files) >= 2:  # 4 balanced shards: each pipeline reads its own files
        assert [halves[0], halves[1]] == [_ids_in_files(files[0::2]), _ids_in_files(files[1::2])]


def test_unbalanced_file_shards_fall_back_to_record_sharding(tmp_path):
    # 3 shards of 10 over 2 pipelines: by file, pipeline 1 would have 10 records only.
    out = str(tmp_path / "r")
    tiny_records.write_records(out, {"train": 30}, size=SIZE, shards_per_split=3)
    records = records_lib.Records.open(out)
    files = [path for path, _ in records.files("train")]
    # Global batch 4: 7 steps need 14 records per pipeline -> by record, over every file.
    halves, _ = _pipeline_ids(records, 4, 2)
    assert not halves[0] & halves[1] and len(halves[1]) == 14
    assert all(halves[1] & _ids_in_files([f]) for f in files)
    # Global batch 20: 1 step needs 10 per pipeline -> by file; pipeline 1 reads shard 1.
    halves, _ = _pipeline_ids(records, 20, 2)
    assert halves[1] == _ids_in_files(files[1:2])


def test_evaluation_pads_to_full_global_batches_and_sees_every_example_once(data_dir):
    table = _case_ids_by_image(data_dir, "val")
    seen, total_weight, lengths = [], 0.0, []
    for pipeline_id in range(2):  # 7 records, global batch 4 -> 8 slots, 2 batches of 2 each
        ds = dataset.make_dataset(
            data_dir, "val", batch_size=4, training=False, input_context=_context(2, pipeline_id)
        )
        assert [spec.shape for spec in ds.element_spec] == [(2, SIZE, SIZE, 3), (2, SIZE, SIZE, 1), (2,)]
        batches = _batches(ds)
        lengths.append(len(batches))
        total_weight += sum(weights.sum() for _, _, weights in batches)
        seen += _case_ids(batches, table, weights=True)
        for images, masks, weights in batches:  # padding is blank
            assert not images[weights == 0].any() and not masks[weights == 0].any()
    assert lengths == [2, 2]
    assert total_weight == 7 == data_dir.size("val")
    assert sorted(seen) == sorted(table.values())


def test_evaluation_single_pipeline_keeps_record_order(data_dir):
    batches = _batches(dataset.make_dataset(data_dir, "val", batch_size=4, training=False))
    assert [w.tolist() for _, _, w in batches] == [[1, 1, 1, 1], [1, 1, 1, 0]]
    reference = np.concatenate([e["image"].numpy() for e in dataset.read_examples(data_dir, "val", 7)])
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[:7], reference)


def test_read_examples_yields_every_record_with_metadata(data_dir):
    examples = list(dataset.read_examples(data_dir, "val", batch_size=4))
    assert [len(e["case_id"]) for e in examples] == [4, 3]
    first = examples[0]
    assert first["image"].dtype == tf.float32 and first["image"].shape == (4, SIZE, SIZE, 3)
    assert first["mask"].shape == (4, SIZE, SIZE, 1)
    assert first["original_size"].numpy().tolist()[0] == [SIZE * 3, SIZE * 4]
    ids = sorted(c.decode() for e in examples for c in e["case_id"].numpy())
    assert ids == [f"VAL_{i:05d}" for i in range(7)]
    assert examples[0]["source_image"].numpy()[0].decode().endswith(".jpg")


def test_empty_split_is_a_clear_error(data_dir):
    for training in (True, False):
        with pytest.raises(records_lib.RecordsError, match=r"split 'test' of .* is empty"):
            dataset.make_dataset(data_dir, "test", batch_size=4, training=training)
    with pytest.raises(records_lib.RecordsError, match="is empty"):
        dataset.read_examples(data_dir, "test", batch_size=4)


def test_read_examples_opens_a_directory_too(data_dir):
    by_path = list(dataset.read_examples(data_dir.data_dir, "val", batch_size=7))
    by_handle = list(dataset.read_examples(data_dir, "val", batch_size=7))
    np.testing.assert_array_equal(by_path[0]["image"], by_handle[0]["image"])


def test_augment_config_reaches_the_augmentation(data_dir):
    def first_images(config):
        ds = dataset.make_dataset(data_dir, "train", batch_size=BATCH, training=True, augment=config)
        return next(iter(ds))[0].numpy()

    plain = first_images(NO_AUGMENT)
    default = first_images(AugmentConfig())
    assert not np.array_equal(plain, default)
    assert not np.array_equal(default, first_images(AugmentConfig(augment_strength=0.5)))
    # Unaugmented batches are exactly the records' pixels, as evaluation reads them.
    table = _case_ids_by_image(data_dir, "train")
    assert len(_case_ids([(plain,)], table)) == BATCH


def test_an_unusable_directory_is_a_clear_error(tmp_path):
    with pytest.raises(records_lib.RecordsError, match="manifest.json not found"):
        records_lib.Records.open(str(tmp_path))
    out = str(tmp_path / "records")
    tiny_records.write_records(out, {"train": 8, "val": 2}, size=SIZE, shards_per_split=2)
    os.remove(os.path.join(out, manifest_lib.shard_name("val", 1, 2)))
    with pytest.raises(records_lib.RecordsError, match="missing"):
        records_lib.Records.open(out)
    assert issubclass(records_lib.RecordsError, UserError)  # printed without a traceback


def test_bad_batch_sizes_are_clear_errors(data_dir):
    with pytest.raises(ValueError, match="does not divide by the 3 replicas"):
        dataset.make_dataset(
            data_dir, "train", batch_size=8, training=True, input_context=_context(1, 0, replicas=3)
        )
    with pytest.raises(records_lib.RecordsError, match="fewer than one global batch"):
        dataset.make_dataset(data_dir, "train", batch_size=64, training=True)
    with pytest.raises(ValueError, match="positive integer"):
        dataset.make_dataset(data_dir, "train", batch_size=0, training=True)
    with pytest.raises(ValueError, match="skip_batches=5"):
        dataset.make_dataset(data_dir, "train", batch_size=8, training=True, skip_batches=5)


def test_shards_that_disagree_with_the_manifest_fail_loudly(tmp_path):
    out = str(tmp_path)
    tiny_records.write_records(out, {"train": 16}, size=SIZE, shards_per_split=2)
    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path))
    manifest["shards"]["train"][0]["records"] += 1
    manifest["counts"]["train"] += 1
    json.dump(manifest, open(path, "w"))
    records = records_lib.Records.open(out)
    ds = dataset.make_dataset(records, "train", batch_size=4, training=True, augment=NO_AUGMENT)
    with pytest.raises(tf.errors.InvalidArgumentError, match="different number of records"):
        _batches(ds)
    # Read under `dataset.reading`, as the trainer does, it is a user error naming the folder.
    with pytest.raises(records_lib.RecordsError, match=re.escape(f"{out}: the shards hold a different")):
        with dataset.reading(records):
            _batches(ds)
    manifest["counts"]["train"] += 1
    json.dump(manifest, open(path, "w"))
    with pytest.raises(records_lib.RecordsError, match=r"counts\['train'\]=18 but its train shards list 17"):
        records_lib.Records.open(out)


def test_a_corrupt_shard_is_a_clear_error(tmp_path):
    out = str(tmp_path)
    tiny_records.write_records(out, {"train": 8}, size=SIZE, shards_per_split=1)
    shard = os.path.join(out, manifest_lib.shard_name("train", 0, 1))
    with open(shard, "r+b") as f:  # flip bytes inside the first record's payload
        f.seek(40)
        f.write(b"\xff" * 8)
    records = records_lib.Records.open(out)
    ds = dataset.make_dataset(records, "train", batch_size=4, training=True, augment=NO_AUGMENT)
    with pytest.raises(records_lib.RecordsError, match=re.escape(f"{out}: a shard is corrupt")):
        with dataset.reading(records):
            _batches(ds)
