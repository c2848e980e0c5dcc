"""The one scaling of record pixels into the model's input range.

Records hold uint8 images; every model of the project takes float32 in [0, 1] (encoders
that want another normalisation apply it inside the model). Training (pipeline/dataset.py),
inference (launch/inference/) and the serving graph (launch/export/serving.py) all call
`to_unit_range`, so the three cannot drift apart: x / 255 in float32, the same IEEE
division on NumPy and TensorFlow, so their results are bit-identical.
"""

import numpy as np
import tensorflow as tf


def to_unit_range(images):
    """uint8 [..., 3] -> float32 in [0, 1]; NumPy in, NumPy out; a tensor in, a tensor out."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / np.float32(255.0)
    return tf.cast(images, tf.float32) / 255.0
