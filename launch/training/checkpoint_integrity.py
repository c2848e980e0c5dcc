"""Which checkpoints of a model directory are intact, and the `checkpoint` state file.

A TensorFlow checkpoint `ckpt-N` is an index, `ckpt-N.index`, and data shards,
`ckpt-N.data-0000k-of-0000n`. The index is a table (LevelDB's format, uncompressed: the
bundle writer uses kNoCompression, tensorflow/include/tensorflow/core/lib/io/
table_options.h) mapping each tensor's name to a BundleEntryProto: shard id, offset,
size and crc32c (tensorflow/core/protobuf/tensor_bundle.proto). So the index says how
long every shard must be, and checking a checkpoint costs one read of its index and a
`stat` per shard, whatever the model's size. A shard cut short (a full disk, a node that
died mid-write, a partial copy) is found before `restore` meets it, where it would raise
"IndexError: Read less bytes than requested"; a missing index is found instead of the
checkpoint silently not counting.

The state file `checkpoints/checkpoint` names the newest checkpoint and the kept ones
(`model_checkpoint_path: "ckpt-8"`, the format tf.train.latest_checkpoint reads). It
is replaced atomically, and only after the checkpoint it names was written and checked
(checkpoints.Saver): whatever a crash interrupts, it names a complete checkpoint.
"""

import datetime
import glob
import os
import re
import struct

from tensorflow.core.protobuf import tensor_bundle_pb2

from core import files

STATE_FILE = "checkpoint"
# Damaged and unfinished checkpoints are moved into this folder of checkpoints/, never deleted.
DAMAGED_DIR = "damaged"
_NUMBERED = re.compile(r"^ckpt-(\d+)(\.index|\.data-\d{5}-of-\d{5}|_temp.*)$")
_TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of a LevelDB table
_FOOTER_BYTES = 48  # two block handles padded to 40 bytes, then the magic
_BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) and crc32c (4 bytes)


class DamagedError(ValueError):
    """A checkpoint's files are missing, cut short or unreadable; the message says which."""


def numbered_files(directory: str) -> dict[int, list[str]]:
    """{N: names of `directory`'s files (and unfinished `_temp` folders) of ckpt-N}."""
    found: dict[int, list[str]] = {}
    for name in sorted(files.listdir(directory)) if files.isdir(directory) else ():
        match = _NUMBERED.match(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(name)
    return found


def check(prefix: str) -> None:
    """Raises DamagedError unless checkpoint `prefix` (…/ckpt-N) is complete.

    Complete: the index parses, and every data shard it names exists with at least the
    bytes its entries need.
    """
    index = prefix + ".index"
    if not files.isfile(index):
        raise DamagedError(f"{index} is missing")
    try:
        with files.open(index, "rb") as f:
            header, entries = _read_index(f.read())
    except (OSError, ValueError, struct.error) as e:  # protobuf's DecodeError is a ValueError
        raise DamagedError(f"{index} is unreadable ({e})") from None
    needed = [0] * header.num_shards
    for name, entry in entries:
        if not 0 <= entry.shard_id < header.num_shards:
            raise DamagedError(f"{index} names shard {entry.shard_id} of {header.num_shards} for {name!r}")
        needed[entry.shard_id] = max(needed[entry.shard_id], entry.offset + entry.size)
    for shard, size in enumerate(needed):
        path = f"{prefix}.data-{shard:05d}-of-{header.num_shards:05d}"
        if not files.isfile(path):
            raise DamagedError(f"{path} is missing")
        actual = files.getsize(path)
        if actual < size:
            raise DamagedError(f"{path} is cut short: {actual} bytes, its index expects {size}")


def tensor_names(prefix: str) -> list[str]:
    """The names of the tensors saved in checkpoint `prefix` (what tf.train.list_variables
    lists, read from the index alone; list_variables takes a `ram://` prefix for a folder)."""
    with files.open(prefix + ".index", "rb") as f:
        return [name for name, _ in _read_index(f.read())[1]]


def _read_index(
    data: bytes,
) -> tuple[tensor_bundle_pb2.BundleHeaderProto, list[tuple[str, tensor_bundle_pb2.BundleEntryProto]]]:
    """Parses a bundle index (a LevelDB table): (header, [(tensor name, entry)])."""
    if len(data) < _FOOTER_BYTES or struct.unpack("<Q", data[-8:])[0] != _TABLE_MAGIC:
        raise ValueError("not a checkpoint index (no table footer): cut short?")
    footer = data[-_FOOTER_BYTES:]
    _, pos = _handle(footer, 0)  # the metaindex block: unused by the bundle format
    index_block, _ = _handle(footer, pos)
    header, entries = None, []
    for _, value in _block_entries(data, index_block):
        for key, entry in _block_entries(data, _handle(value, 0)[0]):
            if key == b"":  # the header sorts first
                header = tensor_bundle_pb2.BundleHeaderProto.FromString(entry)
            else:
                entries.append(
                    (key.decode("utf-8", "replace"), tensor_bundle_pb2.BundleEntryProto.FromString(entry))
                )
    if header is None:
        raise ValueError("no header entry")
    return header, entries


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _handle(data: bytes, pos: int) -> tuple[tuple[int, int], int]:
    """A block handle (offset, size) at `pos`, and the position after it."""
    offset, pos = _varint(data, pos)
    size, pos = _varint(data, pos)
    return (offset, size), pos


def _block_entries(data: bytes, handle: tuple[int, int]):
    """Yields (key, value) of one table block; keys share prefixes with the previous one."""
    offset, size = handle
    if offset + size + _BLOCK_TRAILER_BYTES > len(data) or size < 4:
        raise ValueError(f"block at {offset} (+{size} bytes) lies outside the file")
    if data[offset + size] != 0:
        raise ValueError("compressed block (the bundle writer never compresses)")
    block = data[offset : offset + size]
    num_restarts = struct.unpack("<I", block[-4:])[0]
    end, pos, key = len(block) - 4 - 4 * num_restarts, 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + length]
        pos += length


def read_state(directory: str) -> list[str]:
    """The checkpoint names the state file lists, oldest first, newest last ([]: no file)."""
    path = os.path.join(directory, STATE_FILE)
    if not files.isfile(path):
        return []
    with files.open(path) as f:
        text = f.read()
    latest = re.findall(r'^model_checkpoint_path: "([^"]+)"', text, re.M)
    kept = re.findall(r'^all_model_checkpoint_paths: "([^"]+)"', text, re.M)
    names = [os.path.basename(p) for p in kept if p not in latest] + [os.path.basename(p) for p in latest]
    return names


def write_state(directory: str, names: list[str]) -> None:
    """Replaces the state file atomically: `names` (oldest first) kept, the last the newest."""
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    files.write_atomic(os.path.join(directory, STATE_FILE), "\n".join(lines) + "\n")


def move_aside(directory: str, names: list[str]) -> str:
    """Moves `directory`'s files `names` into `directory/damaged/<UTC time>/`; returns it.

    Never deletes: a damaged checkpoint may still hold what someone wants to salvage.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    target = os.path.join(directory, DAMAGED_DIR, stamp)
    files.makedirs(target)
    for name in names:
        files.rename(os.path.join(directory, name), os.path.join(target, name))
    return target


def files_of(directory: str, number: int) -> list[str]:
    """Names of the files (and `_temp` folders) of ckpt-`number` in `directory`."""
    prefix = os.path.join(glob.escape(directory), f"ckpt-{number}")
    found = files.glob(prefix + ".*") + files.glob(prefix + "_temp*")
    return sorted(os.path.basename(p) for p in found)
