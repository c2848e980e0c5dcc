"""The TFRecord contract shared by the writer (`preprocessing/`) and the reader (`pipeline/`).

One record is one image/mask pair, already resized to `image_size` x `image_size`:

  image/raw        bytes   uint8 [S, S, 3] RGB, row-major (raw, not JPEG: parsing is a
                           memcpy, so the input pipeline never spends CPU on decoding)
  mask/raw         bytes   uint8 [S, S] with values exactly 0 or 1
  image/size       int64   S (records of one dataset all share it; checked on parse)
  case_id          bytes   the ISIC ID, e.g. b"ISIC_0000000"
  original/height  int64   pixel size of the source image, for full-resolution evaluation
  original/width   int64
  source/image     bytes   source file names relative to the images / masks folders
  source/mask      bytes
  source           bytes   the name of the input folder the pair came from (the
                           manifest's "sources" maps it to the folders); optional: records
                           written before it existed read as b""

Bump SCHEMA_VERSION whenever a key or an encoding changes in a way old readers or old
records cannot follow; the manifest records it and the reader refuses records written
under another version. A new key with a default (as `source`) needs no bump: old
records parse with the default, and old readers ignore the key.

The writing half (`encode_example`) never imports TensorFlow, so the builder runs without
it; the reading half (`feature_spec`, `parse_batch`) imports it when called.
"""

import numpy as np

from preprocessing import tfrecord

SCHEMA_VERSION = 1

IMAGE = "image/raw"
MASK = "mask/raw"
SIZE = "image/size"
CASE_ID = "case_id"
ORIGINAL_HEIGHT = "original/height"
ORIGINAL_WIDTH = "original/width"
SOURCE_IMAGE = "source/image"
SOURCE_MASK = "source/mask"
SOURCE = "source"

# key -> (kind, default). Default None: every record has the key.
_FEATURES = {
    IMAGE: ("bytes", None),
    MASK: ("bytes", None),
    SIZE: ("int64", None),
    CASE_ID: ("bytes", None),
    ORIGINAL_HEIGHT: ("int64", None),
    ORIGINAL_WIDTH: ("int64", None),
    SOURCE_IMAGE: ("bytes", None),
    SOURCE_MASK: ("bytes", None),
    SOURCE: ("bytes", ""),
}


def feature_spec() -> dict:
    """The parse spec {key: tf.io.FixedLenFeature} of a record."""
    import tensorflow as tf  # lazy: see the module docstring

    dtypes = {"bytes": tf.string, "int64": tf.int64}
    return {
        key: tf.io.FixedLenFeature([], dtypes[kind], default_value=default)
        for key, (kind, default) in _FEATURES.items()
    }


def encode_example(
    case_id: str,
    image: np.ndarray,
    mask: np.ndarray,
    original_size: tuple[int, int],
    image_file: str,
    mask_file: str,
    source: str = "",
) -> bytes:
    """Serializes one resized pair into a `tf.train.Example` (without TensorFlow:
    preprocessing/tfrecord.py).

    Args:
      case_id: the pair's ID.
      image: uint8 [S, S, 3] RGB.
      mask: uint8 [S, S], values 0/1.
      original_size: (height, width) of the source image.
      image_file, mask_file: source file names (relative to their folders).
      source: the name of the input folder (a key of the manifest's "sources").
    Returns:
      The serialized example (deterministic bytes for equal inputs).
    """
    size = image.shape[0]
    if image.dtype != np.uint8 or image.shape != (size, size, 3):
        raise ValueError(f"{case_id}: image must be uint8 [S, S, 3], got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.shape != (size, size):
        raise ValueError(f"{case_id}: mask must be uint8 [{size}, {size}], got {mask.dtype} {mask.shape}")
    if mask.max(initial=0) > 1:
        raise ValueError(f"{case_id}: mask values must be 0/1, found {int(mask.max())}")
    return tfrecord.example_bytes(
        {
            IMAGE: np.ascontiguousarray(image).tobytes(),
            MASK: np.ascontiguousarray(mask).tobytes(),
            SIZE: int(size),
            CASE_ID: case_id.encode(),
            ORIGINAL_HEIGHT: int(original_size[0]),
            ORIGINAL_WIDTH: int(original_size[1]),
            SOURCE_IMAGE: image_file.encode(),
            SOURCE_MASK: mask_file.encode(),
            SOURCE: source.encode(),
        }
    )


def parse_batch(serialized, image_size: int) -> dict:
    """Parses a batch of serialized examples (vectorised: one op for the whole batch).

    Args:
      serialized: string tensor [B].
      image_size: S, the size recorded in the manifest.
    Returns:
      dict of tensors: "image" uint8 [B, S, S, 3], "mask" uint8 [B, S, S, 1] (0/1),
      "case_id" string [B], "original_size" int64 [B, 2] (height, width),
      "source_image", "source_mask" and "source" string [B].
    """
    import tensorflow as tf  # lazy: see the module docstring

    parsed = tf.io.parse_example(serialized, feature_spec())
    checks = [
        tf.debugging.assert_equal(
            parsed[SIZE],
            tf.constant(image_size, tf.int64),
            message=f"record image size differs from the manifest's {image_size}",
        )
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_raw(parsed[IMAGE], tf.uint8)
    mask = tf.io.decode_raw(parsed[MASK], tf.uint8)
    return {
        "image": tf.reshape(image, [-1, image_size, image_size, 3]),
        "mask": tf.reshape(mask, [-1, image_size, image_size, 1]),
        "case_id": parsed[CASE_ID],
        "original_size": tf.stack([parsed[ORIGINAL_HEIGHT], parsed[ORIGINAL_WIDTH]], axis=-1),
        "source_image": parsed[SOURCE_IMAGE],
        "source_mask": parsed[SOURCE_MASK],
        "source": parsed[SOURCE],
    }
