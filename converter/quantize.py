"""Pack float32 weights into ggml's storage types, bit for bit as ggml does.

Each block type is two steps: choose one scale per block, then pack the block with it.
The packers take the scales as an argument so a better scale search can reuse them; the
`ggml_scales_*` functions are ggml's own rule (ggml-quants.c, quantize_row_*_ref), and
`pack(x, qt)` with them reproduces `gguf.quants.quantize` byte for byte.

    Q8_0 block: f16 d, then 32 int8 q;          x ≈ q·d,      d = max|x| / 127
    Q4_0 block: f16 d, then 16 bytes of nibbles; x ≈ (q − 8)·d, d = (the x with the largest |x|) / −8
                byte j holds x[j] in its low nibble and x[j+16] in its high nibble
    F16: IEEE half (numpy's astype, round to nearest even)
    BF16: the top 16 bits of the f32, rounded to nearest even, NaN made quiet (ggml_compute_fp32_to_bf16)

Every packer returns uint8 rows: shape (..., row_bytes), which is how the GGUF writer is fed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import gguf.quants
from gguf import GGMLQuantizationType as T

from edgegemma.formats import QUANT_TYPES, QuantType


def _blocks(x: np.ndarray, qt: QuantType) -> np.ndarray:
    """View float32 rows as (n_blocks, block_size)."""
    x = np.asarray(x, dtype=np.float32)
    qt.row_bytes(x.shape[-1])  # raises if the row is not whole blocks
    return x.reshape(-1, qt.block_size)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d is 0 (ggml: `id = d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d == 0, 0, 1 / d)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves go away from zero (np.round would go to even)."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


# --- Q8_0 -------------------------------------------------------------------

def ggml_scales_q8_0(blocks: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 scale: d = max|x| / 127 per block, float32 (n_blocks, 1)."""
    return np.abs(blocks).max(axis=1, keepdims=True) / 127


def pack_q8_0(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) float32 + scales (n_blocks, 1) -> (n_blocks, 34) bytes: q = roundf(x / d)."""
    with np.errstate(over="ignore", invalid="ignore"):
        q = _round_half_away(blocks * _inverse(d))
        # Scales other than ggml's may push q out of range; clip finite values (ggml's never need it).
        q = np.where(np.isfinite(q), np.clip(q, -127, 127), q).astype(np.int8)
    return np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)


# --- Q4_0 -------------------------------------------------------------------

def ggml_scales_q4_0(blocks: np.ndarray) -> np.ndarray:
    """ggml's Q4_0 scale: d = m / −8, m the block's value of largest magnitude (first one on ties)."""
    imax = np.abs(blocks).argmax(axis=-1, keepdims=True)
    return np.take_along_axis(blocks, imax, axis=-1) / -8


def pack_q4_0(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) float32 + scales (n_blocks, 1) -> (n_blocks, 18) bytes: q = min(15, trunc(x/d + 8.5))."""
    n_blocks, half = blocks.shape[0], blocks.shape[1] // 2
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.trunc(blocks * _inverse(d) + np.float32(8.5), dtype=np.float32)
        q = np.where(np.isfinite(t), np.clip(t, 0, 15), t).astype(np.uint8)
    q = q.reshape(n_blocks, 2, half)
    nibbles = q[:, 0, :] | (q[:, 1, :] << np.uint8(4))
    return np.concatenate([d.astype(np.float16).view(np.uint8), nibbles], axis=1)


# --- floats -----------------------------------------------------------------

def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), as ggml_compute_fp32_to_bf16: NaN made quiet, round to nearest even."""
    n = np.asarray(x, dtype=np.float32).view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.astype(np.uint16)


# --- one entry point, looked up by type --------------------------------------

def _as_rows(x: np.ndarray, packed: np.ndarray, qt: QuantType) -> np.ndarray:
    return packed.reshape(*x.shape[:-1], qt.row_bytes(x.shape[-1]))


def _pack_blocks(scales: Callable, packer: Callable) -> Callable[[np.ndarray, QuantType], np.ndarray]:
    def pack_rows(x: np.ndarray, qt: QuantType) -> np.ndarray:
        blocks = _blocks(x, qt)
        return _as_rows(x, packer(blocks, scales(blocks)), qt)
    return pack_rows


_PACKERS: dict[T, Callable[[np.ndarray, QuantType], np.ndarray]] = {
    T.F32: lambda x, qt: np.ascontiguousarray(x, dtype=np.float32).view(np.uint8),
    T.F16: lambda x, qt: np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint8),
    T.BF16: lambda x, qt: to_bf16(x).view(np.uint8),
    T.Q8_0: _pack_blocks(ggml_scales_q8_0, pack_q8_0),
    T.Q4_0: _pack_blocks(ggml_scales_q4_0, pack_q4_0),
}
assert set(_PACKERS) == set(QUANT_TYPES), "every type in edgegemma.formats needs a packer"


def pack(x: np.ndarray, qt: QuantType) -> np.ndarray:
    """float32 rows (..., n) -> their bytes in type `qt`, shape (..., qt.row_bytes(n)), ggml's scales."""
    return _PACKERS[qt.ggml_type](x, qt)


def unpack(packed: np.ndarray, qt: QuantType) -> np.ndarray:
    """The float32 values ggml reads back from `packed` (gguf.quants.dequantize, an independent decoder)."""
    return gguf.quants.dequantize(np.asarray(packed).view(np.uint8), qt.ggml_type).astype(np.float32, copy=False)


def error_sums(original: np.ndarray, packed: np.ndarray, qt: QuantType) -> tuple[float, float]:
    """(Σ (w − deq(q(w)))², Σ w²), so the errors of a tensor's chunks can be added up."""
    w = np.asarray(original, dtype=np.float32).reshape(-1)
    diff = w - unpack(packed, qt).reshape(-1)
    return float(diff @ diff), float(w @ w)


def relative_rms(err_sq: float, ref_sq: float) -> float:
    """‖w − deq(q(w))‖ / ‖w‖ from the two sums; 0 for an all-zero tensor stored exactly."""
    if ref_sq == 0:
        return 0.0 if err_sq == 0 else float("inf")
    return (err_sq / ref_sq) ** 0.5


def relative_rms_error(original: np.ndarray, packed: np.ndarray, qt: QuantType) -> float:
    """‖w − deq(packed)‖ / ‖w‖: the error a storage type introduced into one tensor."""
    return relative_rms(*error_sums(original, packed, qt))
