"""The elementwise kernels a transformer needs besides its matmuls, one pass over the data each where numpy makes
three to eight: RMSNorm, GeGLU, the normed residual add, and the q/k norm fused with RoPE.
"""
from __future__ import annotations

import numpy as np
from numba import prange, types

from .blocks import check_in_place
from .jit import FAST, f32_3d, f32_3d_ro, f32_row, f32_rows, f32_rows_ro, f32_vec_ro, inner, jit, split
from .scalar import exp

ELEMENTWISE_CHUNK = 1 << 15  # values per parallel task; below two tasks' worth a kernel runs on the calling thread


@inner(fastmath=FAST, inline="always")
def _gelu(v):
    """gelu_tanh(v) = 0.5 v (1 + tanh(z)) = v / (1 + e^(-2z)): one exp, and no cancellation for very negative v."""
    z = np.float32(np.sqrt(2.0 / np.pi)) * (v + np.float32(0.044715) * v * v * v)
    return v / (np.float32(1.0) + exp(np.float32(-2.0) * z))


@inner(fastmath=FAST, inline="always")
def _rms_scale(row, eps):
    """1 / sqrt(mean(row^2) + eps): what RMSNorm multiplies a row by (before its weight)."""
    total = np.float32(0.0)
    for i in range(row.size):
        total += row[i] * row[i]
    return np.float32(1.0) / np.sqrt(total / np.float32(row.size) + eps)


@jit(types.void(f32_rows_ro, f32_vec_ro, types.float32, f32_rows, types.int64, types.int64), fastmath=FAST)
def _rms_norm_rows(x, weight, eps, out, r0, r1):
    for r in range(r0, r1):
        row, dst = x[r], out[r]
        scale = _rms_scale(row, eps)
        for i in range(row.size):
            dst[i] = row[i] * scale * weight[i]


@jit(types.void(f32_rows, f32_rows_ro, f32_vec_ro, types.float32, types.int64, types.int64), fastmath=FAST)
def _add_rms_norm_rows(x, y, weight, eps, r0, r1):
    for r in range(r0, r1):
        row, dst = y[r], x[r]
        scale = _rms_scale(row, eps)
        for i in range(row.size):
            dst[i] += row[i] * scale * weight[i]


@jit(types.void(f32_rows, f32_rows_ro, f32_vec_ro, types.float32, types.int64), parallel=True,
      calls=(_add_rms_norm_rows,))
def _add_rms_norm_parallel(x, y, weight, eps, per_task):
    for task in prange(-(-x.shape[0] // per_task)):
        _add_rms_norm_rows(x, y, weight, eps, task * per_task, min(x.shape[0], (task + 1) * per_task))


@jit(types.void(f32_rows_ro, f32_vec_ro, types.float32, f32_rows, types.int64), parallel=True, calls=(_rms_norm_rows,))
def _rms_norm_parallel(x, weight, eps, out, per_task):
    for task in prange(-(-x.shape[0] // per_task)):
        _rms_norm_rows(x, weight, eps, out, task * per_task, min(x.shape[0], (task + 1) * per_task))


@jit(types.void(f32_row, f32_row, types.int64, types.int64), fastmath=FAST)
def _gelu_tanh_range(x, out, i0, i1):
    src, dst = x[i0:i1], out[i0:i1]
    for i in range(src.size):
        dst[i] = _gelu(src[i])


@jit(types.void(f32_row, f32_row, types.int64), parallel=True, calls=(_gelu_tanh_range,))
def _gelu_tanh_parallel(x, out, per_task):
    for task in prange(-(-x.size // per_task)):
        _gelu_tanh_range(x, out, task * per_task, min(x.size, (task + 1) * per_task))


# In place, read and written through one slice: given x as both source and destination, LLVM's vectorized loop
# finds them overlapping at run time and takes its scalar loop.
@jit(types.void(f32_row, f32_vec_ro, types.int64, types.int64), fastmath=FAST)
def _gelu_tanh_mul_range(x, y, i0, i1):
    dst, other = x[i0:i1], y[i0:i1]
    for i in range(dst.size):
        dst[i] = _gelu(dst[i]) * other[i]


@jit(types.void(f32_row, f32_vec_ro, types.int64), parallel=True, calls=(_gelu_tanh_mul_range,))
def _gelu_tanh_mul_parallel(x, y, per_task):
    for task in prange(-(-x.size // per_task)):
        _gelu_tanh_mul_range(x, y, task * per_task, min(x.size, (task + 1) * per_task))


@jit(types.void(f32_3d_ro, f32_vec_ro, types.float32, f32_rows_ro, f32_rows_ro, f32_3d, types.int64, types.int64),
      fastmath=FAST)
def _rms_norm_rope_rows(x, weight, eps, cos, sin, out, t0, t1):
    half = cos.shape[1]
    w1, w2 = weight[:half], weight[half:2 * half]
    for t in range(t0, t1):
        c, s = cos[t], sin[t]
        for h in range(x.shape[1]):
            scale = _rms_scale(x[t, h], eps)
            x1, x2 = x[t, h, :half], x[t, h, half:2 * half]
            o1, o2 = out[t, h, :half], out[t, h, half:2 * half]
            for i in range(half):
                a, b = x1[i] * scale * w1[i], x2[i] * scale * w2[i]
                o1[i] = a * c[i] - b * s[i]
                o2[i] = b * c[i] + a * s[i]


@jit(types.void(f32_3d_ro, f32_vec_ro, types.float32, f32_rows_ro, f32_rows_ro, f32_3d, types.int64), parallel=True,
      calls=(_rms_norm_rope_rows,))
def _rms_norm_rope_parallel(x, weight, eps, cos, sin, out, per_task):
    for task in prange(-(-x.shape[0] // per_task)):
        _rms_norm_rope_rows(x, weight, eps, cos, sin, out, task * per_task, min(x.shape[0], (task + 1) * per_task))


def rms_norm(x, weight, eps) -> np.ndarray:
    """x / sqrt(mean(x^2 over the last axis) + eps) * weight."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    d = weight.shape[0]
    rows = x.reshape(-1, d)
    out = np.empty_like(rows)
    split(_rms_norm_rows, _rms_norm_parallel, rows.shape[0], max(1, ELEMENTWISE_CHUNK // d), rows, weight,
          np.float32(eps), out)
    return out.reshape(x.shape)


def gelu_tanh(x) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), elementwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    split(_gelu_tanh_range, _gelu_tanh_parallel, flat.size, ELEMENTWISE_CHUNK, flat, flat_out)
    return out


def gelu_tanh_mul(x, y) -> np.ndarray:
    """x = gelu_tanh(x) * y, in place (x: a writable float32 C array; y: its shape), one pass; returns x."""
    check_in_place(x, y)
    flat, other = x.reshape(-1), np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    split(_gelu_tanh_mul_range, _gelu_tanh_mul_parallel, flat.size, ELEMENTWISE_CHUNK, flat, other)
    return x


def add_rms_norm(x, y, weight, eps) -> np.ndarray:
    """x += rms_norm(y, weight, eps), in place (x: a writable float32 C array; y: its shape), one pass; returns x."""
    check_in_place(x, y)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    d = weight.shape[0]
    rows, normed = x.reshape(-1, d), np.ascontiguousarray(y, dtype=np.float32).reshape(-1, d)
    split(_add_rms_norm_rows, _add_rms_norm_parallel, rows.shape[0], max(1, ELEMENTWISE_CHUNK // d), rows, normed,
          weight, np.float32(eps))
    return x


def rms_norm_rope(x, weight, eps, cos, sin, out=None) -> np.ndarray:
    """rms_norm over the last axis of x (tokens, heads, d), then each head rotated by angles with cos and sin
    (tokens, d / 2), its halves paired: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). One pass, into `out`
    (x's shape) when given."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    cos, sin = np.ascontiguousarray(cos, dtype=np.float32), np.ascontiguousarray(sin, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    check_in_place(out, x)
    per_task = max(1, ELEMENTWISE_CHUNK // max(1, x.shape[1] * x.shape[2]))
    split(_rms_norm_rope_rows, _rms_norm_rope_parallel, x.shape[0], per_task, x, weight, np.float32(eps), cos, sin, out)
    return out


KERNELS = (_rms_norm_rows, _rms_norm_parallel, _add_rms_norm_rows, _add_rms_norm_parallel, _gelu_tanh_mul_range,
           _gelu_tanh_mul_parallel, _rms_norm_rope_rows, _rms_norm_rope_parallel, _gelu_tanh_range, _gelu_tanh_parallel)
