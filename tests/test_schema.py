"""The writer/reader contract: encode_example -> parse_batch round trip."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import schema
from tests import factory
from tests.conftest import PROJECT_ROOT


def test_round_trip_exact_values():
    rng = np.random.default_rng(0)
    pairs = [factory.make_pair(rng, 8) for _ in range(3)]
    blobs = [schema.encode_example(f"ID_{i}", im, m, (30 + i, 40), f"ID_{i}.jpg", f"ID_{i}_segmentation.png")
             for i, (im, m) in enumerate(pairs)]
    out = schema.parse_batch(tf.constant(blobs), 8)
    assert out["image"].shape == (3, 8, 8, 3) and out["image"].dtype == tf.uint8
    assert out["mask"].shape == (3, 8, 8, 1)
    for i, (im, m) in enumerate(pairs):
        np.testing.assert_array_equal(out["image"][i].numpy(), im)
        np.testing.assert_array_equal(out["mask"][i, ..., 0].numpy(), m)
    assert out["case_id"].numpy().tolist() == [b"ID_0", b"ID_1", b"ID_2"]
    assert out["original_size"].numpy().tolist() == [[30, 40], [31, 40], [32, 40]]
    assert out["source_mask"][1].numpy() == b"ID_1_segmentation.png"
    assert out["source"].numpy().tolist() == [b"", b"", b""]   # not given: ""


def test_source_round_trip_and_records_written_without_it():
    im, m = factory.make_pair(np.random.default_rng(3), 8)
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


def test_importing_the_schema_does_not_import_tensorflow():
    # isic-preprocess checks a finished build (manifest.py -> schema.py) before TensorFlow.
    code = ("import sys; import preprocessing.schema, preprocessing.manifest; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=PROJECT_ROOT), timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_encoding_is_deterministic():
    rng = np.random.default_rng(1)
    im, m = factory.make_pair(rng, 8)
    a = schema.encode_example("X", im, m, (8, 8), "X.jpg", "X_segmentation.png")
    b = schema.encode_example("X", im.copy(), m.copy(), (8, 8), "X.jpg", "X_segmentation.png")
    assert a == b


def test_size_mismatch_is_an_error():
    rng = np.random.default_rng(2)
    im, m = factory.make_pair(rng, 8)
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
