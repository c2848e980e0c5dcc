"""The bytes of a TFRecord file of `tf.train.Example`s, written without TensorFlow.

The builder runs without TensorFlow (its import alone took half of a 456-image build and
most of the process's memory); the readers (`pipeline/`, evaluation) read these files with
TensorFlow. Two formats are involved, both fixed and documented by TensorFlow:

  A TFRecord file is a sequence of records, each framed as
      uint64 length (little endian) | uint32 masked_crc32c(length bytes) |
      data | uint32 masked_crc32c(data)
  (tensorflow/core/lib/io/record_writer.cc), with
      masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2**32).

  An Example is the protocol buffer (tensorflow/core/example/{example,feature}.proto)
      Example  { Features features = 1; }
      Features { map<string, Feature> feature = 1; }
      Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                              Int64List int64_list = 3; } }
      BytesList { repeated bytes value = 1; }
      Int64List { repeated int64 value = 1 [packed = true]; }
  serialized as `SerializeToString(deterministic=True)` does with the protobuf runtime
  TensorFlow uses (upb): each map entry `key = 1, value = 2`, entries sorted by key bytes
  except that a key comes AFTER the longer keys it is a prefix of ("source/image" before
  "source"; upb compares the common prefix, then puts the longer key first). Only
  single-valued bytes and int64 features are needed.

tests/test_schema.py checks that `example_bytes` equals TensorFlow's serialization and
that `frame` equals `tf.io.TFRecordWriter`'s output, byte for byte.
"""

import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_UINT32 = 0xFFFFFFFF
_UINT64 = (1 << 64) - 1


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data` (masking keeps CRCs of CRCs well spread)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & _UINT32) + _MASK_DELTA) & _UINT32


def frame(record: bytes) -> bytes:
    """One record as it appears in a TFRecord file (header, data, footer)."""
    length = struct.pack("<Q", len(record))
    return b"".join(
        (length, struct.pack("<I", masked_crc32c(length)), record, struct.pack("<I", masked_crc32c(record)))
    )


def example_bytes(features: dict[str, bytes | int]) -> bytes:
    """A serialized `tf.train.Example` of single-valued features: bytes values become
    BytesList features, ints Int64List features (as deterministic serialization writes)."""
    entries = []
    for key in sorted(features, key=_map_order):
        value = features[key]
        if isinstance(value, bytes):
            feature = _field(1, _field(1, value))  # Feature.bytes_list{value: [v]}
        elif isinstance(value, int) and not isinstance(value, bool):
            feature = _field(3, _field(1, _varint(value & _UINT64)))  # int64_list, packed
        else:
            raise TypeError(f"feature {key!r}: expected bytes or int, got {type(value).__name__}")
        entries.append(_field(1, _field(1, key.encode()) + _field(2, feature)))
    return _field(1, b"".join(entries))  # Example.features{feature: entries}


def _map_order(key: str) -> bytes:
    """Sort key of upb's deterministic map order (module doc): bytewise, and a prefix
    after its extensions. Ending each key with 0xff, a byte UTF-8 never contains, does both."""
    return key.encode() + b"\xff"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (negative int64s arrive as their uint64)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
