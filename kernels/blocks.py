"""The block formats the kernels read, as data, and the argument checks both backends share.

A weight arrives as ggml stores it: a C-contiguous uint8 array of shape (rows, row_bytes), one row per
output feature, each row a run of blocks. Sizes come from `gguf.GGML_QUANT_SIZES`; the layouts are ggml's:

    F32   4 bytes per value
    F16   IEEE half, 2 bytes per value
    BF16  the upper 16 bits of a float32, 2 bytes per value
    Q8_0  34-byte block: f16 scale d, then 32 int8 q;           value = d * q
    Q4_0  18-byte block: f16 scale d, then 16 bytes; byte j holds q[j] in its low nibble and
          q[j + 16] in its high nibble;                          value = (q - 8) * d
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

F32 = int(GGMLQuantizationType.F32)
F16 = int(GGMLQuantizationType.F16)
BF16 = int(GGMLQuantizationType.BF16)
Q8_0 = int(GGMLQuantizationType.Q8_0)
Q4_0 = int(GGMLQuantizationType.Q4_0)

# type id -> (name, values per block, bytes per block), in the order error messages list them.
BLOCK_FORMATS: dict[int, tuple[str, int, int]] = {
    t: (GGMLQuantizationType(t).name, *GGML_QUANT_SIZES[GGMLQuantizationType(t)]) for t in (F32, F16, BF16, Q8_0, Q4_0)
}


def block_format(qtype) -> tuple[str, int, int]:
    """(name, block_size, type_size) of a supported type id, or a ValueError naming it and listing the supported ones."""
    try:
        return BLOCK_FORMATS[int(qtype)]
    except (KeyError, TypeError, ValueError):
        try:
            label = GGMLQuantizationType(qtype).name
        except (ValueError, TypeError):
            label = f"unknown type id {qtype!r}"
        supported = ", ".join(name for name, _, _ in BLOCK_FORMATS.values())
        raise ValueError(f"tensor type {label} is not supported by the kernels (supported: {supported})") from None


def weight_bytes(w: np.ndarray, qtype) -> tuple[np.ndarray, int, int]:
    """Check a stored weight and return (its read-only uint8 view, rows, k values per row). Never copies.

    Arrays of another dtype (a float32 or float16 tensor as `gguf.GGUFReader` hands it out) are reinterpreted
    row by row as their bytes.
    """
    name, block_size, type_size = block_format(qtype)
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
