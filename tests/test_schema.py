"""The writer/reader contract: encode_example -> parse_batch round trip."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import schema
from preprocessing import tfrecord
from preprocessing import tiny_records


def test_round_trip_exact_values():
    rng = np.random.default_rng(0)
    pairs = [tiny_records.make_pair(rng, 8) for _ in range(3)]
    blobs = [
        schema.encode_example(f"ID_{i}", im, m, (30 + i, 40), f"ID_{i}.jpg", f"ID_{i}_segmentation.png")
        for i, (im, m) in enumerate(pairs)
    ]
    out = schema.parse_batch(tf.constant(blobs), 8)
    assert out["image"].shape == (3, 8, 8, 3) and out["image"].dtype == tf.uint8
    assert out["mask"].shape == (3, 8, 8, 1)
    for i, (im, m) in enumerate(pairs):
        np.testing.assert_array_equal(out["image"][i].numpy(), im)
        np.testing.assert_array_equal(out["mask"][i, ..., 0].numpy(), m)
    assert out["case_id"].numpy().tolist() == [b"ID_0", b"ID_1", b"ID_2"]
    assert out["original_size"].numpy().tolist() == [[30, 40], [31, 40], [32, 40]]
    assert out["source_mask"][1].numpy() == b"ID_1_segmentation.png"
    assert out["source"].numpy().tolist() == [b"", b"", b""]  # not given: ""


def test_source_round_trip_and_records_written_without_it():
    im, m = tiny_records.make_pair(np.random.default_rng(3), 8)
    new = schema.encode_example("X", im, m, (8, 8), "X.jpg", "X_segmentation.png", "clinic_a")
    # A record as builders wrote them before the `source` feature existed.
    example = tf.train.Example()
    example.ParseFromString(new)
    del example.features.feature[schema.SOURCE]
    old = example.SerializeToString(deterministic=True)
    out = schema.parse_batch(tf.constant([new, old]), 8)
    assert out["source"].numpy().tolist() == [b"clinic_a", b""]
    for parsed in (out["image"][0], out["image"][1]):
        np.testing.assert_array_equal(parsed.numpy(), im)


def _tf_serialized(features: dict) -> bytes:
    """What the builder wrote with TensorFlow before it stopped importing it."""

    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(feature={key: feature(value) for key, value in features.items()})
    )
    return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "size,source,original", [(8, "", (30, 40)), (16, "clinic_a", (3000, 4000)), (1, "x" * 200, (2**40, 1))]
)
def test_encoding_is_byte_identical_to_tensorflows(size, source, original):
    # Records written without TensorFlow are the ones it wrote (and its readers expect).
    im, m = tiny_records.make_pair(np.random.default_rng(size), size)
    ours = schema.encode_example("ISIC_0000001", im, m, original, "a.jpg", "a_segmentation.png", source)
    assert ours == _tf_serialized(
        {
            schema.IMAGE: im.tobytes(),
            schema.MASK: m.tobytes(),
            schema.SIZE: size,
            schema.CASE_ID: b"ISIC_0000001",
            schema.ORIGINAL_HEIGHT: original[0],
            schema.ORIGINAL_WIDTH: original[1],
            schema.SOURCE_IMAGE: b"a.jpg",
            schema.SOURCE_MASK: b"a_segmentation.png",
            schema.SOURCE: source.encode(),
        }
    )
    # Every int64 the varint encoding can meet, negative ones included; map keys that are
    # prefixes of others (protobuf's map order, preprocessing/tfrecord.py).
    for value in (0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)):
        features = {"v": value, "b": b"", "a": b"1", "ab": b"2", "aa/": 3, "B": b"", "a/b/c": b"4"}
        assert tfrecord.example_bytes(features) == _tf_serialized(features)


def test_framing_is_byte_identical_to_tfrecordwriter(tmp_path):
    records = [b"", b"a", bytes(range(256)) * 300]
    path = str(tmp_path / "r.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    with open(path, "rb") as f:
        assert b"".join(tfrecord.frame(r) for r in records) == f.read()


def test_encoding_is_deterministic():
    rng = np.random.default_rng(1)
    im, m = tiny_records.make_pair(rng, 8)
    a = schema.encode_example("X", im, m, (8, 8), "X.jpg", "X_segmentation.png")
    b = schema.encode_example("X", im.copy(), m.copy(), (8, 8), "X.jpg", "X_segmentation.png")
    assert a == b


def test_size_mismatch_is_an_error():
    rng = np.random.default_rng(2)
    im, m = tiny_records.make_pair(rng, 8)
    blob = schema.encode_example("X", im, m, (8, 8), "X.jpg", "X_segmentation.png")
    with pytest.raises(tf.errors.InvalidArgumentError, match="manifest"):
        schema.parse_batch(tf.constant([blob]), 16)


@pytest.mark.parametrize("bad", ["dtype", "shape", "values"])
def test_encode_rejects_bad_arrays(bad):
    im = np.zeros((8, 8, 3), np.uint8)
    m = np.zeros((8, 8), np.uint8)
    if bad == "dtype":
        im = im.astype(np.float32)
    elif bad == "shape":
        m = np.zeros((8, 9), np.uint8)
    else:
        m[0, 0] = 255
    with pytest.raises(ValueError):
        schema.encode_example("X", im, m, (8, 8), "X.jpg", "X_segmentation.png")
