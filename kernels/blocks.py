"""The storage types, as data (the one table: edgegemma.formats and the converter read it too), and the argument
checks both backends share.

A weight arrives as ggml stores it: a C-contiguous uint8 array of shape (rows, row_bytes), one row per
output feature, each row a run of blocks. Sizes come from `gguf.GGML_QUANT_SIZES`; the layouts are ggml's:

    F32   4 bytes per value
    F16   IEEE half, 2 bytes per value
    BF16  the upper 16 bits of a float32, 2 bytes per value
    Q8_0  34-byte block: f16 scale d, then 32 int8 q;           value = d * q
    Q4_0  18-byte block: f16 scale d, then 16 bytes; byte j holds q[j] in its low nibble and
          q[j + 16] in its high nibble;                          value = (q - 8) * d
    Q4_1  20-byte block: f16 d, f16 m, then Q4_0's 16 bytes;     value = d * q + m
    Q5_0  22-byte block: f16 d, 4 bytes qh (bit j: the 5th bit of q[j], little-endian), Q4_0's 16 bytes;
                                                                 value = (q - 16) * d
    Q5_1  24-byte block: f16 d, f16 m, qh, the 16 bytes;         value = d * q + m

The K-quants: 256-value super-blocks of sub-blocks, each sub-block with its own integer scale (and min) times
the super-block's f16 d (and dmin), rounded to float32 before it multiplies q:

    Q4_K  144 bytes: f16 d, f16 dmin, 12 bytes of eight 6-bit scales and mins (ggml's get_scale_min_k4), 128
          bytes: byte 32 g + l holds sub-block 2 g's q[l] in its low nibble, sub-block 2 g + 1's in its high;
                                                                 value = (d * sc) * q - (dmin * m)
    Q5_K  176 bytes: Q4_K's d, dmin and scales, then 32 bytes qh (bit s of byte l: the 5th bit of sub-block
          s's q[l]), then Q4_K's 128 bytes;                      value = (d * sc) * q - (dmin * m)
    Q6_K  210 bytes: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16 int8 scales (one per 16
          values), f16 d last. Value v = 128 g + 32 s + l (g < 2, s < 4): low bits in nibble s // 2 of
          ql[64 g + 32 (s % 2) + l], high bits at 2 s of qh[32 g + l];  value = (d * sc) * (q - 32)

Types written by edgegemma's converter are `written`; the others it reads as llama.cpp's quantizer makes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

F32 = int(GGMLQuantizationType.F32)
F16 = int(GGMLQuantizationType.F16)
BF16 = int(GGMLQuantizationType.BF16)
Q8_0 = int(GGMLQuantizationType.Q8_0)
Q4_0 = int(GGMLQuantizationType.Q4_0)
Q4_1 = int(GGMLQuantizationType.Q4_1)
Q5_0 = int(GGMLQuantizationType.Q5_0)
Q5_1 = int(GGMLQuantizationType.Q5_1)
Q4_K = int(GGMLQuantizationType.Q4_K)
Q5_K = int(GGMLQuantizationType.Q5_K)
Q6_K = int(GGMLQuantizationType.Q6_K)


@dataclass(frozen=True)
class QuantType:
    """One storage type: how many values a block holds and how many bytes it takes."""

    name: str  # the name users type: --type q4_0
    ggml_type: GGMLQuantizationType
    block_size: int  # values per block
    type_size: int  # bytes per block
    written: bool  # edgegemma's converter writes it (and `--type` offers it); else it is only read

    @property
    def label(self) -> str:
        """The name ggml gives it ("Q4_0"), as messages show it."""
        return self.ggml_type.name

    def row_bytes(self, n_values: int) -> int:
        """Bytes one row of `n_values` takes; rows must hold whole blocks."""
        if n_values % self.block_size:
            raise ValueError(f"{self.name}: a row of {n_values} values is not a whole number of {self.block_size}-value blocks")
        return n_values // self.block_size * self.type_size


_WRITTEN = (F32, F16, BF16, Q8_0, Q4_0)
_READ_ONLY = (Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)  # what llama.cpp's quantizer puts in EmbeddingGemma files
# Every type edgegemma reads, in the order messages list them; anything else is refused by name.
QUANT_TYPES: dict[GGMLQuantizationType, QuantType] = {
    t: QuantType(t.name.lower(), t, *GGML_QUANT_SIZES[t], written=int(t) in _WRITTEN)
    for t in map(GGMLQuantizationType, _WRITTEN + _READ_ONLY)
}
QUANT_TYPES_BY_NAME: dict[str, QuantType] = {qt.name: qt for qt in QUANT_TYPES.values()}
WRITTEN_TYPES: dict[GGMLQuantizationType, QuantType] = {t: qt for t, qt in QUANT_TYPES.items() if qt.written}


def quant_type(ggml_type) -> QuantType:
    """The table entry for a GGML type id, or a ValueError that names the type and lists what is supported."""
    try:
        return QUANT_TYPES[GGMLQuantizationType(int(ggml_type))]
    except (KeyError, TypeError, ValueError):
        try:
            label = GGMLQuantizationType(int(ggml_type)).name
        except (TypeError, ValueError):
            label = f"unknown type id {ggml_type!r}"
        raise ValueError(f"tensor type {label} is not supported (supported: {', '.join(QUANT_TYPES_BY_NAME)})") from None


def weight_bytes(w: np.ndarray, qtype) -> tuple[np.ndarray, int, int]:
    """Check a stored weight and return (its read-only uint8 view, rows, k values per row). Never copies.

    Arrays of another dtype (a float32 or float16 tensor as `gguf.GGUFReader` hands it out) are reinterpreted
    row by row as their bytes.
    """
    qt = quant_type(qtype)
    name, block_size, type_size = qt.label, qt.block_size, qt.type_size
    w = getattr(w, "stored", w)  # a weight packed for a compiled design carries the bytes it was packed from
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ValueError(f"{name} weight must be a 2-D array (rows, row_bytes), got {getattr(w, 'shape', type(w).__name__)}")
    if not w.flags.c_contiguous:
        raise ValueError(f"{name} weight of shape {w.shape} must be C-contiguous (the kernels never copy a weight)")
    w = np.asarray(w)  # drop np.memmap and other subclasses: a view, not a copy
    if w.dtype != np.uint8:
        w = w.view(np.uint8)
    w = w.view()
    w.flags.writeable = False
    rows, row_bytes = w.shape
    if row_bytes % type_size:
        raise ValueError(f"{name} rows of {row_bytes} bytes are not a whole number of {type_size}-byte blocks")
    return w, rows, row_bytes // type_size * block_size


def activations(x: np.ndarray, k: int, name: str) -> np.ndarray:
    """x as a C-contiguous float32 (n, k) array (copied only if it is not one already)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"activations must be 2-D (n, k), got shape {x.shape}")
    if x.shape[1] != k:
        raise ValueError(f"activations have k={x.shape[1]} values per row but the {name} weight rows hold k={k} values")
    return np.ascontiguousarray(x, dtype=np.float32)


def row_indices(row_ids, rows: int) -> np.ndarray:
    """row_ids as a contiguous int64 vector, each checked to lie in [0, rows)."""
    ids = np.asarray(row_ids)
    if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
        raise ValueError(f"row_ids must be a 1-D sequence of integers, got {ids.dtype} of shape {ids.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        bad = ids[(ids < 0) | (ids >= rows)][0]
        raise IndexError(f"row id {bad} is out of range for a weight of {rows} rows")
    return ids


def check_in_place(x: np.ndarray, y: np.ndarray) -> None:
    """x can be written in place with an elementwise op of x and y: a writable C-contiguous float32 array, y of its shape."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable):
        raise ValueError("the in-place operand must be a writable C-contiguous float32 array")
    if np.shape(y) != x.shape:
        raise ValueError(f"operands of shapes {x.shape} and {np.shape(y)} do not match")
