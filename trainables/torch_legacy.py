"""Read a PyTorch checkpoint in the legacy serialization without PyTorch.

PyTorch before 1.6 wrote ``torch.save`` files as consecutive pickle streams: a magic
number, the protocol version, system information, the object itself (its tensors refer
to storages by persistent ids), the list of storage keys, then each storage as an 8-byte
little-endian element count followed by its raw little-endian elements. The standard
library's ``pickle`` with a ``persistent_load`` and ``find_class`` restricted to the few
names a state dict uses, plus numpy, reads it; nothing in the file is executed.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}


class LegacyFormatError(ValueError):
    """The file is not a legacy PyTorch checkpoint of tensors this reader knows."""


@dataclass(frozen=True)
class _TensorRef:
    storage: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: str, offset: int, shape: tuple, stride: tuple, *_: Any) -> _TensorRef:
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


class _Unpickler(pickle.Unpickler):
    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storage_types: dict[str, str] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise LegacyFormatError(f"unexpected object {module}.{name} in the checkpoint")

    def persistent_load(self, pid: Any) -> str:
        # ("storage", storage type, key, device, element count[, view metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise LegacyFormatError(f"unexpected persistent id {pid!r}")
        self.storage_types[str(pid[2])] = pid[1]
        return str(pid[2])


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy ``torch.save`` state dict, by name, as numpy arrays."""
    with open(path, "rb") as file:
        try:
            magic = pickle.load(file)
        except (pickle.UnpicklingError, EOFError, ValueError):
            magic = None
        if magic != MAGIC:
            raise LegacyFormatError(f"{path} is not a legacy PyTorch checkpoint (zip-based files are not read here)")
        pickle.load(file)  # protocol version
        pickle.load(file)  # system information (endianness, type sizes)
        unpickler = _Unpickler(file)
        state = unpickler.load()
        keys = pickle.load(file)
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", file.read(8))
            dtype = np.dtype(STORAGE_DTYPES[unpickler.storage_types[str(key)]]).newbyteorder("<")
            storages[str(key)] = np.frombuffer(file.read(count * dtype.itemsize), dtype)
    arrays = {}
    for name, ref in state.items():
        base = storages[ref.storage]
        view = np.lib.stride_tricks.as_strided(base[ref.offset:], shape=ref.shape,
                                               strides=[s * base.itemsize for s in ref.stride])
        arrays[name] = np.array(view)  # a copy: the views alias one read-only buffer
    return arrays
