"""The storage types, as data (the one table: edgegemma.formats and the converter read it too), and the argument
checks both backends share.

A weight arrives as ggml stores it: a C-contiguous uint8 array of shape (rows, row_bytes), one row per
output feature, each row a run of blocks. Ids and sizes are ggml's (GGML_TYPES below); so are the layouts:

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
from enum import IntEnum

import numpy as np

# ggml's type ids, names and (values per block, bytes per block), as gguf.GGMLQuantizationType and
# gguf.GGML_QUANT_SIZES have them: written out so that opening a model imports no gguf (its import costs more than
# the rest of opening a file); tests/test_gguf_spec.py holds them equal to the package's.
GGML_TYPES: dict[str, tuple[int, int, int]] = {
    "F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q8_1": (9, 32, 40), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "Q8_K": (15, 256, 292),
    "IQ2_XXS": (16, 256, 66), "IQ2_XS": (17, 256, 74), "IQ3_XXS": (18, 256, 98), "IQ1_S": (19, 256, 50),
    "IQ4_NL": (20, 32, 18), "IQ3_S": (21, 256, 110), "IQ2_S": (22, 256, 82), "IQ4_XS": (23, 256, 136),
    "I8": (24, 1, 1), "I16": (25, 1, 2), "I32": (26, 1, 4), "I64": (27, 1, 8), "F64": (28, 1, 8),
    "IQ1_M": (29, 256, 56), "BF16": (30, 1, 2), "TQ1_0": (34, 256, 54), "TQ2_0": (35, 256, 66),
    "MXFP4": (39, 32, 17), "NVFP4": (40, 64, 36), "Q1_0": (41, 128, 18),
}
# An IntEnum like gguf's, so that a type compares, hashes and prints as the package's does.
GGMLQuantizationType = IntEnum("GGMLQuantizationType", {name: i for name, (i, _, _) in GGML_TYPES.items()},
                               module=__name__)
GGML_QUANT_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = {
    GGMLQuantizationType(i): (block, size) for i, block, size in GGML_TYPES.values()}

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
