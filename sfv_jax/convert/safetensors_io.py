"""Reading and writing safetensors files with numpy only: no torch, no pickle.

Our own reader reads one tensor at a time and validates its header against the file size, so a
truncated or corrupt download fails with a message that names the file instead of a segfault
or a cryptic error deep inside a library, and bfloat16 tensors load (through ml_dtypes).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

from sfv_jax.errors import CheckpointError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsFile:
    """A memory-mapped safetensors file: `keys()`, `shape(key)`, `get(key)` -> numpy array view."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{path}: file is truncated ({size} bytes, no safetensors header); "
                                          f"download it again")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > min(MAX_HEADER_BYTES, size - 8):
                    raise CheckpointError(f"{path}: not a valid safetensors file (header length {header_len} "
                                          f"exceeds file size {size}); download it again")
                header = json.loads(f.read(header_len))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            if isinstance(e, FileNotFoundError):
                raise CheckpointError(f"{path}: file not found") from None
            raise CheckpointError(f"{path}: cannot read safetensors header ({e}); download the file again") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = {}
        data_start = 8 + header_len
        for key, entry in header.items():
            try:
                dtype = DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: malformed header entry for tensor {key!r}") from None
            if data_start + end > size:
                raise CheckpointError(f"{path}: file is truncated: tensor {key!r} ends at byte {data_start + end} "
                                      f"but the file has {size} bytes; download it again")
            if end - begin != int(np.prod(shape)) * dtype.itemsize:
                raise CheckpointError(f"{path}: corrupt header: tensor {key!r} has {end - begin} bytes "
                                      f"for shape {shape} {entry['dtype']}")
            self._entries[key] = (dtype, shape, data_start + begin)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def dtype(self, key: str) -> np.dtype:
        return self._entries[key][0]

    def get(self, key: str) -> np.ndarray:
        """Reads one tensor from disk.

        A plain read rather than a memory map: mapped pages stay resident (and count as the
        process's memory) until the whole file is unmapped, which would double the peak memory
        of converting a 6 GB UNet; a read buffer is freed as soon as the tensor is converted.
        """
        dtype, shape, offset = self._entries[key]
        count = int(np.prod(shape))
        if count == 0:
            return np.zeros(shape, dtype)
        return np.fromfile(self.path, dtype=dtype, count=count, offset=offset).reshape(shape)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray] | Iterator[tuple[str, np.ndarray]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes tensors (in the given order) as one safetensors file, streaming one tensor at a time."""
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    header, offset = {}, 0
    for key, array in items:
        nbytes = array.size * array.dtype.itemsize
        header[key] = {"dtype": DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = {"__metadata__": dict(metadata or {"format": "pt"}), **header}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, array in items:
            f.write(np.ascontiguousarray(array).tobytes())
