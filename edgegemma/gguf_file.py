"""Open a GGUF file: its metadata as a dict, its tensors as zero-copy views of one memory map.

gguf's own GGUFReader builds a numpy view per array element, which for this model's 262,144-token
vocabulary takes about a minute; this reader does the same job with one vectorised read per numeric
array, so a model opens in well under a second. The layout constants come from the gguf package,
and tests hold this reader against GGUFReader field by field.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType, Keys


class ModelFileError(ValueError):
    """A file that is not a usable model: the message names the file and the problem."""


_SCALARS = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.UINT64: np.dtype("<u8"), GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.FLOAT64: np.dtype("<f8"),
    GGUFValueType.BOOL: np.dtype("<u1"),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order: (rows, values per row) for a matrix
    data: np.ndarray  # uint8 (rows, bytes per row), a read-only view into the file


class _Cursor:
    """Reads little-endian values from a buffer and says clearly when the file ends too soon."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> int:
        start = self.pos
        if start + n > len(self.buf):
            raise ModelFileError(f"{self.path}: file is truncated (header needs byte {start + n:,}, file has {len(self.buf):,})")
        self.pos += n
        return start

    def unpack(self, fmt: str):
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        start = self.take(n)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{self.path}: corrupt metadata (a string at byte {start:,} is not UTF-8)") from None

    def value(self, vtype: int):
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise ModelFileError(f"{self.path}: corrupt metadata (unknown value type {vtype} at byte {self.pos:,})") from None
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if item_type in _SCALARS:
                dtype = _SCALARS[GGUFValueType(item_type)]
                start = self.take(count * dtype.itemsize)
                return np.frombuffer(self.buf, dtype, count, start)
            if item_type == GGUFValueType.STRING:
                return self.strings(count)
            return [self.value(item_type) for _ in range(count)]
        dtype = _SCALARS[vtype]
        value = np.frombuffer(self.buf, dtype, 1, self.take(dtype.itemsize))[0].item()
        return bool(value) if vtype == GGUFValueType.BOOL else value

    def strings(self, count: int) -> "StringArray":
        """A string array, decoded only when read: the vocabulary alone is 262,144 strings."""
        starts = np.empty(count, np.int64)
        lengths = np.empty(count, np.int64)
        unpack, buf = struct.Struct("<Q").unpack_from, self.buf
        pos = self.pos
        try:
            for i in range(count):
                n = unpack(buf, pos)[0]
                starts[i], lengths[i] = pos + 8, n
                pos += 8 + n
        except struct.error:
            raise ModelFileError(f"{self.path}: file is truncated (inside a string array)") from None
        self.take(pos - self.pos)
        return StringArray(self.buf, starts, lengths)


class StringArray:
    """A read-only sequence of the strings of a GGUF string array, decoded on access."""

    def __init__(self, buf, starts: np.ndarray, lengths: np.ndarray):
        self._buf, self._starts, self._lengths = buf, starts, lengths

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> str:
        start = int(self._starts[i])
        return bytes(self._buf[start:start + int(self._lengths[i])]).decode("utf-8", errors="replace")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class GGUFFile:
    """A memory-mapped GGUF file: `.metadata` (key -> value; numeric arrays are numpy views) and
    `.tensors` (name -> TensorInfo). Nothing is copied out of the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelFileError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{self.path}: is a folder, not a GGUF file") from None
        except ValueError:  # mmap of an empty file
            raise ModelFileError(f"{self.path}: file is empty") from None
        buf = memoryview(self._map)
        cur = _Cursor(buf, self.path)
        if len(buf) < 4 or cur.unpack("<I") != GGUF_MAGIC:
            raise ModelFileError(f"{self.path}: not a GGUF file (bad magic number)")
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise ModelFileError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.unpack("<I"))

        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            dims = tuple(cur.unpack("<Q") for _ in range(n_dims))  # ggml order: fastest-varying first
            infos.append((name, cur.unpack("<I"), dims, cur.unpack("<Q")))
        alignment = int(self.metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
        data_start = -(-cur.pos // alignment) * alignment

        self.tensors: dict[str, TensorInfo] = {}
        array = np.frombuffer(buf, np.uint8)
        for name, ggml_type, dims, offset in infos:
            try:
                block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                raise ModelFileError(f"{self.path}: tensor {name} has unknown type id {ggml_type}") from None
            row_values = dims[0] if dims else 1
            n_rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            if row_values % block_size:
                raise ModelFileError(f"{self.path}: tensor {name}: a row of {row_values} values is not whole {block_size}-value blocks")
            row_bytes = row_values // block_size * type_size
            start, end = data_start + offset, data_start + offset + n_rows * row_bytes
            if end > len(buf):
                raise ModelFileError(
                    f"{self.path}: file is truncated: tensor {name} needs bytes {start:,}..{end:,}, file has {len(buf):,}"
                )
            view = array[start:end].reshape(n_rows, row_bytes)
            self.tensors[name] = TensorInfo(name, ggml_type, tuple(reversed(dims)), view)
