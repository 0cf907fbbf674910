"""Open a GGUF file: its metadata as a dict, its tensors as zero-copy views of one memory map.

gguf's own GGUFReader builds a numpy view per array element, which for this model's 262,144-token
vocabulary takes about a minute; this reader does the same job with one vectorised read per numeric
array, so a model opens in well under a second. The layout constants are the gguf package's (gguf_spec),
and tests hold this reader against GGUFReader field by field.
"""
from __future__ import annotations

import mmap
import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from .gguf_spec import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFValueType, Keys
from .kernels.blocks import GGML_QUANT_SIZES, GGMLQuantizationType


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


MAX_ARRAY_DEPTH = 4  # arrays of arrays: deeper nesting than any GGUF writer makes is a corrupt file
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 16


def shown(value) -> str:
    """A metadata value in a one-line message: its repr, cut short; an array by its shape."""
    text = f"an array of shape {value.shape}" if hasattr(value, "shape") else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(name: str) -> str:
    """A key or tensor name as messages show it: as is, or quoted with escapes when it holds unprintable characters."""
    return name if name.isprintable() else repr(name)


class _Cursor:
    """Reads little-endian values from a buffer. Every length and count is checked against the bytes left before
    it is used, so a corrupt field gives a ModelFileError naming the byte and the item (`where`), never a huge
    allocation or an arithmetic error."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path
        self.where = "the header"  # what is being read, for messages: a metadata key, a tensor info

    def fail(self, problem: str, short: bool = False) -> ModelFileError:
        """The error for `problem` at what is being read; short: the data runs past the end of the file."""
        return ModelFileError(f"{self.path}: {'file is truncated or corrupt' if short else 'corrupt file'}: {self.where}: {problem}")

    def take(self, n: int, what: str = "a value") -> int:
        start = self.pos
        if n > len(self.buf) - start:
            raise self.fail(f"{what} at byte {start:,} needs {n:,} bytes; the file ends at byte {len(self.buf):,}", short=True)
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str = "a value"):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def count(self, n: int, item_bytes: int, what: str) -> int:
        """A count of items of at least `item_bytes` each, refused when the rest of the file cannot hold them."""
        left = len(self.buf) - self.pos
        if n > left // item_bytes:
            raise self.fail(f"{what} at byte {self.pos - 8:,} is {n:,}, more than the {left:,} bytes left can hold", short=True)
        return n

    def string(self, what: str = "a string") -> str:
        n = self.unpack("<Q", f"the length of {what}")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {start:,} is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0):
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise self.fail(f"unknown value type {vtype} before byte {self.pos:,}") from None
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"arrays nested over {MAX_ARRAY_DEPTH} deep at byte {self.pos:,}")
            item_type = self.unpack("<I", "an array's item type")
            count = self.unpack("<Q", "an array's length")
            if item_type in _SCALARS:
                dtype = _SCALARS[GGUFValueType(item_type)]
                start = self.take(self.count(count, dtype.itemsize, "an array's length") * dtype.itemsize, "an array")
                return np.frombuffer(self.buf, dtype, count, start)
            if item_type == GGUFValueType.STRING:
                return self.strings(self.count(count, 8, "a string array's length"))
            self.count(count, 12, "an array's length")  # an array item takes at least its type and length
            return [self.value(item_type, depth + 1) for _ in range(count)]
        dtype = _SCALARS[vtype]
        value = np.frombuffer(self.buf, dtype, 1, self.take(dtype.itemsize))[0].item()
        return bool(value) if vtype == GGUFValueType.BOOL else value

    def strings(self, count: int) -> "StringArray":
        """A string array, decoded only when read: the vocabulary alone is 262,144 strings."""
        found = _short_string_fields(self.buf, self.pos, count) if count else None
        if found is None:
            return self._strings_one_by_one(count)
        starts, lengths = found
        self.take(int(starts[-1] + lengths[-1]) - self.pos, f"a string array of {count:,} strings")
        return StringArray(self.buf, starts, lengths)

    def _strings_one_by_one(self, count: int) -> "StringArray":
        """Each string's place follows from the previous one's length: one Python loop (~60 ms of CPU for the
        vocabulary), keeping only the running offsets (a list, then one array)."""
        unpack, buf = struct.Struct("<Q").unpack_from, self.buf
        pos = self.pos
        offsets = [pos]
        append = offsets.append
        i = 0
        try:
            for i in range(count):
                pos += 8 + unpack(buf, pos)[0]
                append(pos)
        except (struct.error, OverflowError):  # a length past the end of the file (or past any offset there is)
            raise self.fail(f"string {i:,} of {count:,} in an array runs past the end of the file "
                            f"(it starts at byte {offsets[-1]:,})", short=True) from None
        self.take(pos - self.pos, f"a string array of {count:,} strings")
        offsets = np.array(offsets, np.int64)
        starts = offsets[:-1] + 8
        return StringArray(self.buf, starts, offsets[1:] - starts)


_SCAN_BYTES = 1 << 20  # the string-field search reads the file this much at a time (small transient memory)


def _short_string_fields(buf, pos: int, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The strings of a string array at `pos` (each one's start and length), found without a Python loop when
    every string is 1 to 255 bytes long and holds no NUL byte (every vocabulary we have seen); None otherwise.

    Such a string's length field is a nonzero byte and seven zero bytes, which no eight bytes of a text (nonzero
    bytes) or across a text's end (its last byte, then the next field's nonzero first byte) can be. So the places
    where that pattern starts are the fields; each is kept only if it lies 8 + its length after the one before,
    the first at `pos`: exactly the offsets the loop would compute. (~7 ms for Gemma's vocabulary.)"""
    data = np.frombuffer(buf, np.uint8)
    limit = min(len(data), pos + count * (8 + 255))  # no array of short strings reaches further
    parts, found, expected, at = [], 0, pos, pos  # expected: where the next field must start
    while found < count:
        n = min(limit, at + _SCAN_BYTES + 7) - at - 7  # fields may start at [at, at + n)
        if n <= 0:
            return None
        zero = data[at:at + n + 7] == 0
        zeros_2 = zero[:-1] & zero[1:]  # zeros_2[p]: bytes p and p + 1 are zero
        zeros_4 = zeros_2[:-2] & zeros_2[2:]
        zeros_7 = zeros_4[:-3] & zeros_4[3:]  # bytes p .. p + 6
        starts = np.flatnonzero(zeros_7[1:] > zero[:n])[:count - found] + at  # byte p nonzero, p + 1 .. p + 7 zero
        if len(starts):
            lengths = data[starts].astype(np.int64)  # the length's first byte; the other seven are zero
            if starts[0] != expected or not np.array_equal(starts[1:], starts[:-1] + 8 + lengths[:-1]):
                return None
            expected = int(starts[-1] + 8 + lengths[-1])
            parts.append((starts, lengths))
            found += len(starts)
        at += n
        if found < count and expected < at:  # the next field lies in what was searched, and was not found
            return None
    if expected > len(data):  # the last string runs past the end: the loop says so, where
        return None
    return np.concatenate([p[0] for p in parts]) + 8, np.concatenate([p[1] for p in parts])


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

    def texts(self, indices) -> list[str]:
        """[self[i] for i in indices], decoded in one piece: the strings' bytes gathered with a NUL after each, one
        decode, one split (the tokenizer's ~6,400 added tokens: ~1 ms against ~5). Strings holding a NUL
        themselves are decoded one by one."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        starts, lengths = self._starts[indices], self._lengths[indices].astype(np.int64)
        ends = np.cumsum(lengths + 1)  # each string's NUL, in the joined bytes
        which = np.repeat(np.arange(len(indices)), lengths + 1)
        at = np.arange(int(ends[-1]) if len(ends) else 0) - (ends - lengths - 1)[which]  # place in its string
        joined = np.zeros(len(at), np.uint8)
        text = at < lengths[which]
        joined[text] = np.frombuffer(self._buf, np.uint8)[starts[which[text]] + at[text]]
        if np.count_nonzero(joined) != len(joined) - len(indices):
            return [self[i] for i in indices.tolist()]
        return joined.tobytes().decode("utf-8", errors="replace").split("\x00")[:-1]

    def raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The strings undecoded, for bulk work: the file's bytes (uint8), each string's start in them, its length."""
        return np.frombuffer(self._buf, np.uint8), self._starts, self._lengths

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class GGUFFile:
    """A memory-mapped GGUF file: `.metadata` (key -> value; numeric arrays are numpy views) and
    `.tensors` (name -> TensorInfo). Nothing is copied out of the file, except by `read_rows`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                # A descriptor of its own for read_rows (pread), closed with this object.
                self._fd = os.dup(f.fileno()) if hasattr(os, "pread") else None
            if self._fd is not None:
                weakref.finalize(self, os.close, self._fd)
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
        version = cur.unpack("<I", "the version")
        if version not in (2, 3):
            raise ModelFileError(f"{self.path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors = cur.count(cur.unpack("<Q", "the tensor count"), 24, "the tensor count")  # name, dims, type, offset
        n_kv = cur.count(cur.unpack("<Q", "the metadata count"), 13, "the metadata count")  # key, type, a byte
        self.metadata: dict = {}
        self._value_ends: dict[str, int] = {}
        for i in range(n_kv):
            cur.where = f"metadata entry {i:,} of {n_kv:,}"
            key = cur.string("a key")
            cur.where = f"metadata key {_shown(key)}"
            if key in self.metadata:
                raise cur.fail("the key appears twice")
            self.metadata[key] = cur.value(cur.unpack("<I", "the value type"))
            self._value_ends[key] = cur.pos

        infos = []
        for i in range(n_tensors):
            cur.where = f"tensor info {i:,} of {n_tensors:,}"
            name = cur.string("a tensor name")
            cur.where = f"tensor {_shown(name)}"
            n_dims = cur.unpack("<I", "the number of dimensions")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"{n_dims} dimensions (1 to {MAX_DIMS})")
            dims = tuple(cur.unpack("<Q", "a dimension") for _ in range(n_dims))  # ggml order: fastest-varying first
            infos.append((name, cur.unpack("<I", "the type"), dims, cur.unpack("<Q", "the data offset")))
        alignment = self.metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
        if isinstance(alignment, bool) or not isinstance(alignment, int) or not 0 < alignment <= MAX_ALIGNMENT \
                or alignment & (alignment - 1):
            raise ModelFileError(f"{self.path}: corrupt file: {Keys.General.ALIGNMENT} is {alignment!r}, "
                                 f"not a power of two up to {MAX_ALIGNMENT:,}")
        data_start = -(-cur.pos // alignment) * alignment
        self.data_start = data_start

        self.tensors: dict[str, TensorInfo] = {}
        array = np.frombuffer(buf, np.uint8)
        for name, ggml_type, dims, offset in infos:
            self.tensors[name] = self._tensor_info(array, name, ggml_type, dims, offset, data_start, alignment)
        self._data_offset = array.ctypes.data  # address of byte 0 of the file in the map

    def string_end(self, key: str) -> int:
        """The byte just past a metadata value: for a string, its last character's offset + 1."""
        return self._value_ends[key]

    def _tensor_info(self, array: np.ndarray, name: str, ggml_type: int, dims: tuple[int, ...], offset: int,
                     data_start: int, alignment: int) -> TensorInfo:
        """One tensor's view into the file, its type, shape and place checked (sizes in Python ints: no overflow)."""
        where = f"{self.path}: tensor {_shown(name)}"
        if name in self.tensors:
            raise ModelFileError(f"{where}: corrupt file: two tensors have this name")
        try:
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise ModelFileError(f"{where} has unknown type id {ggml_type}") from None
        row_values, n_rows = dims[0], 1
        for d in dims[1:]:
            n_rows *= d
        if row_values % block_size:
            raise ModelFileError(f"{where}: a row of {row_values:,} values is not whole {block_size}-value blocks")
        row_bytes = row_values // block_size * type_size
        if offset % alignment:
            raise ModelFileError(f"{where}: corrupt file: data offset {offset:,} is not a multiple of the alignment {alignment}")
        start = data_start + offset
        end = start + n_rows * row_bytes
        if end > len(array):
            raise ModelFileError(f"{where}: file is truncated or corrupt: shape {tuple(reversed(dims))} at byte {start:,} "
                                 f"needs bytes up to {end:,}; the file ends at byte {len(array):,}")
        view = array[start:end].reshape(n_rows, row_bytes)
        return TensorInfo(name, ggml_type, tuple(reversed(dims)), view)

    def read_rows(self, info: TensorInfo, rows: np.ndarray) -> np.ndarray:
        """Copies of the rows `rows` (sorted, unique, in range) of a tensor, uint8 (len(rows), row_bytes),
        read with pread rather than through the map.

        For the embedding table (2/3 of a file, read a few rows at a time): a page fault on a map brings in
        its neighbours too (the kernel maps up to 64 KiB around it), so a few thousand distinct tokens
        put the whole table in this process's resident set (measured: 3,000 random rows of the Q4_0 table
        mapped 95 of its 108 MiB). pread copies just the rows; the file stays in the page cache either way."""
        data = info.data
        out = np.empty((len(rows), data.shape[1]), np.uint8)
        if self._fd is None or not len(rows):  # no pread here (Windows): from the map
            return np.take(data, rows, axis=0, out=out)
        base, stride = data.ctypes.data - self._data_offset, data.shape[1]
        pread, fd = os.pread, self._fd
        starts = (base + np.asarray(rows, np.int64) * stride).tolist()
        # Neighbouring rows in one read: token ids cluster (a text's words are often close in the vocabulary).
        i, n = 0, len(starts)
        while i < n:
            j = i + 1
            while j < n and starts[j] == starts[j - 1] + stride:
                j += 1
            chunk = pread(fd, (j - i) * stride, starts[i])
            if len(chunk) != (j - i) * stride:
                raise ModelFileError(f"{self.path}: file is truncated (the file changed after it was opened)")
            out[i:j] = np.frombuffer(chunk, np.uint8).reshape(j - i, stride)
            i = j
        return out

    def release_header(self) -> None:
        """Drop the metadata's pages (the vocabulary, the SentencePiece model: ~15 MiB) from this process's
        resident set once the model is built from them; they are read back from the file if used again."""
        self._release(0, self.data_start)

    def release(self, info: TensorInfo) -> None:
        """Drop a tensor's pages from this process's resident set (those it shares with no other tensor): for
        tensors read once at load into a form of their own."""
        start = info.data.ctypes.data - self._data_offset
        self._release(start, start + info.data.nbytes)

    def _release(self, start: int, end: int) -> None:
        page = mmap.PAGESIZE
        start, end = -(-start // page) * page, min(end, len(self._map)) // page * page
        if hasattr(mmap, "MADV_DONTNEED") and end > start:
            try:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
            except OSError:
                pass
