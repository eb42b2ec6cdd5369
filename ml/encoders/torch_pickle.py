"""Read a LEGACY (pre-1.6, non-zip) PyTorch ``torch.save`` file without PyTorch.

Layout of a legacy file (see ``torch/serialization.py::_legacy_save``), all pickles protocol 2:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version (``1001``);
3. ``sys_info`` (a dict: ``little_endian``, ``type_sizes``, ...);
4. the object itself, where every storage is a *persistent id*
   ``("storage", storage_type, key, location, numel[, view_metadata])`` and every tensor is a call
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``;
5. the list of storage keys, in the order their bytes follow;
6. for each key: an int64 element count, then ``count * itemsize`` raw bytes (little-endian unless
   ``sys_info`` says otherwise).

Only a small allow-list of globals is resolved (``collections.OrderedDict``, the tensor rebuild
functions and the ``torch.*Storage`` classes); anything else raises ``TorchPickleError``, so loading a
file never runs arbitrary code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> numpy dtype (BFloat16 is widened to float32 after reading).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(ValueError):
    """The file is not a legacy torch pickle this reader understands."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes are read after the object pickle."""

    def __init__(self, key: str, type_name: str, numel: int) -> None:
        self.key = key
        self.type_name = type_name
        self.dtype = _STORAGE_DTYPES[type_name]
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor view on a storage; resolved into a numpy array once the storage bytes are read."""

    def __init__(self, storage: Any, offset: int, size: tuple, stride: tuple) -> None:
        if isinstance(storage, tuple):  # (root storage, view offset, view size) from view_metadata
            storage, view_offset, _ = storage
            offset += view_offset
        self.storage: _Storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def resolve(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise TorchPickleError(f"storage {self.storage.key!r} has no data")
        n = int(np.prod(self.size)) if self.size else 1
        if n == 0:
            out = np.zeros(self.size, dtype=data.dtype)
        else:
            last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
            if self.offset < 0 or last >= data.size:
                raise TorchPickleError(
                    f"tensor view out of bounds of storage {self.storage.key!r} ({last} >= {data.size})"
                )
            item = data.itemsize
            out = np.lib.stride_tricks.as_strided(
                data[self.offset :],
                shape=self.size,
                strides=tuple(st * item for st in self.stride),
                writeable=False,
            ).copy()
        out = out.astype(out.dtype.newbyteorder("="), copy=False)
        if self.storage.type_name == "BFloat16Storage":  # numpy has no bfloat16: widen to float32
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out if out.flags.c_contiguous else out.copy(order="C")


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(f, encoding="latin1")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise TorchPickleError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise TorchPickleError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.name, int(numel))
            self._storages[key] = storage
        if view_metadata is not None:
            view_key, offset, view_size = view_metadata
            return (storage, int(offset), int(view_size))
        return storage


def _plain_load(f: BinaryIO) -> Any:
    """A pickle of plain data (magic number, protocol, sys_info, key list): no globals allowed."""
    return _Unpickler(f, {}).load()


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TorchPickleError(f"file truncated: wanted {n} bytes, got {len(data)}")
    return data


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.resolve()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def load_legacy(path: str | Path) -> Any:
    """Load any object from a legacy torch file, with tensors as numpy arrays."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise TorchPickleError(f"{path}: a zip-format torch file, not the legacy format")
        f.seek(0)
        try:
            magic = _plain_load(f)
        except Exception as exc:  # noqa: BLE001 - any failure means "not our format"
            raise TorchPickleError(f"{path}: not a legacy torch pickle ({exc})") from exc
        if magic != MAGIC_NUMBER:
            raise TorchPickleError(f"{path}: bad magic number {magic!r}")
        protocol = _plain_load(f)
        if protocol != PROTOCOL_VERSION:
            raise TorchPickleError(f"{path}: unsupported protocol version {protocol!r}")
        sys_info = _plain_load(f)
        little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True

        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, storages).load()
        keys = _plain_load(f)
        if not isinstance(keys, list):
            raise TorchPickleError(f"{path}: storage key list missing")
        for key in keys:
            key = str(key)
            storage = storages.get(key)
            if storage is None:
                raise TorchPickleError(f"{path}: storage {key!r} listed but never referenced")
            (count,) = struct.unpack("<q" if little_endian else ">q", _read_exact(f, 8))
            if count != storage.numel:
                raise TorchPickleError(
                    f"{path}: storage {key!r} has {count} elements, pickle said {storage.numel}"
                )
            dtype = storage.dtype if little_endian else storage.dtype.newbyteorder(">")
            raw = _read_exact(f, count * dtype.itemsize)
            storage.data = np.frombuffer(raw, dtype=dtype)
        missing = [k for k, s in storages.items() if s.data is None]
        if missing:
            raise TorchPickleError(f"{path}: storages without data: {missing[:5]}")
    return _resolve(obj)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy torch ``state_dict`` file as ``{name: np.ndarray}`` (insertion order kept)."""
    obj = load_legacy(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchPickleError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise TorchPickleError(f"{path}: entry {name!r} is {type(value).__name__}, not a tensor")
        out[str(name)] = value
    return out
