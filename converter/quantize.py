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

Two quantizers choose the scales (`QUANTIZERS`, recorded in the file as edgegemma.quantizer):

    ggml    ggml's rule above; the bytes are gguf.quants.quantize's, bit for bit
    search  per block, try a grid of scales and keep the one with the least weighted squared
            error Σ w·(x − q·d)², each candidate refitted by least squares (as llama.cpp's
            make_qx_quants); w = importance[column] · sqrt(mean(x²) + x²) (llama.cpp's weighting
            for an importance matrix), importance = 1 without calibration. ggml's own scale is
            always a candidate, so no block ends up with more weighted error than ggml's.

On top of these the writer offers the calibrated quantizers: imatrix (search, with the importance
from edgegemma.converter.calibrate) and gptq (converter.gptq: the same scales, the values chosen by GPTQ).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import gguf.quants
from gguf import GGMLQuantizationType as T

from edgegemma.formats import WRITTEN_TYPES, QuantType


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


# --- scale search (the `search` quantizer) -----------------------------------

# The level the block's largest-magnitude value is mapped to; d = m / t, then refitted.
# Q4_0 levels are −8..7: ggml maps m to −8; the search also tries −7.0..−9.0 and +6.5..+7.5.
_Q4_0_TARGETS = np.r_[-8.0 - 0.1 * np.arange(-10, 11), 6.5 + 0.1 * np.arange(11)].astype(np.float32)
_Q8_0_TARGETS = (127.0 - 0.5 * np.arange(17)).astype(np.float32)


def _f16(d: np.ndarray) -> np.ndarray:
    """d as the f16 the block stores (inf where it overflows)."""
    with np.errstate(over="ignore"):
        return d.astype(np.float16).astype(np.float32)


def q4_0_levels(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The signed levels −8..7 pack_q4_0 stores for scale d (same arithmetic, so the same bytes)."""
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.trunc(blocks * _inverse(d) + np.float32(8.5), dtype=np.float32)
        return np.where(np.isfinite(t), np.clip(t, 0, 15), t) - np.float32(8)


def q8_0_levels(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The levels −127..127 pack_q8_0 stores for scale d."""
    with np.errstate(over="ignore", invalid="ignore"):
        q = _round_half_away(blocks * _inverse(d))
        return np.where(np.isfinite(q), np.clip(q, -127, 127), q)


def block_weights(blocks: np.ndarray, importance: np.ndarray | None) -> np.ndarray:
    """Per-value error weights: importance[column] · sqrt(mean(x²) of the row + x²)."""
    x2 = np.square(blocks)
    w = np.sqrt(x2.mean(axis=1, keepdims=True) + x2)  # the block's mean square stands in for the row's
    if importance is not None:
        w = w * np.asarray(importance, np.float32).reshape(-1, blocks.shape[1])  # importance is tiled per row
    return w


def weighted_error(blocks: np.ndarray, weights: np.ndarray, d: np.ndarray, levels: Callable) -> np.ndarray:
    """Σ w·(x − q·d)² per block (n_blocks,), with q and d exactly as they are stored."""
    d16 = _f16(d)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.sum(weights * np.square(blocks - levels(blocks, d16) * d16), axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def _search(blocks: np.ndarray, weights: np.ndarray, targets: np.ndarray, qmin: float, qmax: float,
            ggml_d: np.ndarray, levels: Callable) -> np.ndarray:
    imax = np.abs(blocks).argmax(axis=-1)[:, None]
    m = np.take_along_axis(blocks, imax, axis=-1)
    best_d = ggml_d.astype(np.float32)
    best_err = weighted_error(blocks, weights, best_d, levels)
    wx = weights * blocks
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for t in targets:
            inv = np.float32(t) * _inverse(m)  # 1 / (m / t)
            q = np.clip(np.floor(blocks * inv + np.float32(0.5)), qmin, qmax)
            sqq = np.sum(weights * q * q, axis=1, keepdims=True)
            d = np.where(sqq > 0, np.sum(wx * q, axis=1, keepdims=True) / sqq, 0).astype(np.float32)
            err = weighted_error(blocks, weights, d, levels)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_d = np.where(better[:, None], d, best_d)
    return best_d


def _search_loop(blocks, weights, targets, qmin, qmax, out):
    """The same search as _search, one block at a time (compiled with Numba when it imports).

    For each target t: d = m / t, q = clip(round(x / d)), d ← Σwxq / Σwq² (least squares),
    error Σw(x − q·d)² with q re-rounded for that d; the best d goes to out[b]. The f16 rounding
    of d and the comparison with ggml's scale are left to the caller (numpy, see _finish).
    """
    n, size = blocks.shape
    for b in range(n):
        m = np.float32(0.0)
        for j in range(size):
            if abs(blocks[b, j]) > abs(m):
                m = blocks[b, j]
        best_err, best_d = np.inf, np.float32(0.0)
        if m == 0:
            out[b] = 0.0
            continue
        for t in targets:
            inv = t / m
            sxq, sqq = 0.0, 0.0
            for j in range(size):
                q = min(max(np.floor(blocks[b, j] * inv + 0.5), qmin), qmax)
                sxq += weights[b, j] * blocks[b, j] * q
                sqq += weights[b, j] * q * q
            if sqq <= 0:
                continue
            d = sxq / sqq
            inv_d = 1.0 / d
            err = 0.0
            for j in range(size):
                q = min(max(np.floor(blocks[b, j] * inv_d + 0.5), qmin), qmax)
                e = blocks[b, j] - q * d
                err += weights[b, j] * e * e
            if err < best_err:
                best_err, best_d = err, d
        out[b] = best_d


try:
    import numba

    _search_compiled = numba.njit(cache=True, nogil=True, fastmath=True)(_search_loop)
except ImportError:  # pragma: no cover - numba is a dependency; the numpy search below is the fallback
    _search_compiled = None


def _finish(blocks: np.ndarray, weights: np.ndarray, d: np.ndarray, ggml_d: np.ndarray, levels: Callable) -> np.ndarray:
    """Keep the searched scale only where, stored as f16, it beats ggml's: never worse than ggml, exactly."""
    better = weighted_error(blocks, weights, d, levels) < weighted_error(blocks, weights, ggml_d, levels)
    return np.where(better[:, None], d, ggml_d).astype(np.float32)


def _search_fast(blocks, weights, targets, qmin, qmax, ggml_d, levels) -> np.ndarray:
    if _search_compiled is None:
        return _search(blocks, weights, targets, qmin, qmax, ggml_d, levels)
    out = np.empty(blocks.shape[0], np.float32)
    _search_compiled(np.ascontiguousarray(blocks, np.float32), np.ascontiguousarray(weights, np.float32),
                     targets, np.float32(qmin), np.float32(qmax), out)
    return _finish(blocks, weights, out[:, None], ggml_d, levels)


def search_scales_q4_0(blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Q4_0 scales (n_blocks, 1) minimising Σ w·(x − (q − 8)·d)², never worse than ggml's."""
    return _search_fast(blocks, weights, _Q4_0_TARGETS, -8, 7, ggml_scales_q4_0(blocks), q4_0_levels)


def search_scales_q8_0(blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Q8_0 scales (n_blocks, 1) minimising Σ w·(x − q·d)², never worse than ggml's."""
    return _search_fast(blocks, weights, _Q8_0_TARGETS, -127, 127, ggml_scales_q8_0(blocks), q8_0_levels)


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
assert set(_PACKERS) == set(WRITTEN_TYPES), "every type edgegemma.formats marks written needs a packer"


QUANTIZERS = ("ggml", "search")
# Block type -> (scale search, the levels its packer stores for a scale, packer): the search
# quantizer and converter.gptq both work from this table.
BLOCK_RULES: dict[T, tuple[Callable, Callable, Callable]] = {
    T.Q8_0: (search_scales_q8_0, q8_0_levels, pack_q8_0),
    T.Q4_0: (search_scales_q4_0, q4_0_levels, pack_q4_0),
}


def pack(x: np.ndarray, qt: QuantType, quantizer: str = "ggml", importance: np.ndarray | None = None,
         lookup: bool = False) -> np.ndarray:
    """float32 rows (..., n) -> their bytes in type `qt`, shape (..., qt.row_bytes(n)).

    quantizer "ggml": ggml's scales, gguf.quants' bytes. "search": searched scales for the block
    types, weighted by `importance` (n,) per input column when given; float types are unaffected.
    lookup: x is a table whose rows are read, not multiplied (the token embeddings): every value
    counts alike, so the search minimises the plain squared error (reference texts, e4_q8:
    mean/min cosine 0.99898/0.9905 with the weighting of block_weights, 0.99901/0.9910 without).
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; valid: {', '.join(QUANTIZERS)}")
    if quantizer == "ggml" or qt.ggml_type not in BLOCK_RULES:
        return _PACKERS[qt.ggml_type](x, qt)
    scales, _, packer = BLOCK_RULES[qt.ggml_type]
    blocks = _blocks(x, qt)
    if lookup:
        if importance is not None:
            raise ValueError("a lookup table has no importance per column")
        return _as_rows(x, packer(blocks, scales(blocks, np.ones_like(blocks))), qt)
    if importance is not None:
        importance = np.asarray(importance, np.float32)
        if importance.shape != (x.shape[-1],):
            raise ValueError(f"importance has shape {importance.shape}, expected ({x.shape[-1]},) for rows of {x.shape[-1]}")
        importance = np.broadcast_to(importance, x.shape).reshape(blocks.shape)
    return _as_rows(x, packer(blocks, scales(blocks, block_weights(blocks, importance))), qt)


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
