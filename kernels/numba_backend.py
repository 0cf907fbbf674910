"""The Numba kernels: the same three functions as numpy_backend, compiled.

Per type there is only a row decoder (`_decode_q8_0(src, dst)` ...: one stored row -> float32, bit-exact with
gguf.quants) and one function mapping type ids to them (`_decode_row`). Everything else is generic and built per
type by `_build_float_kernels`. matmul has two designs and picks by batch size (DIRECT_MAX_N says why):
  direct  - each thread decodes four W rows into L1 and multiplies every token by them (`_dot_rows`)
  tile    - decode a tile of W rows into a reusable float32 scratch, BLAS multiplies the batch by it
No integer (int8-activation) path yet. What was tried: through Numba, LLVM 22 turns an i8 x i8 -> i32 sum over a
loop of run-time length into vpmaddwd (s8 x s8) or vpdpwssd (u8 x s8), never vpdpbusd (it picked 256-bit
vectors, 8 lanes, too narrow for its VPDPBUSD rewrite); a loop of constant length 32 is unrolled and left
scalar. A ggml-style per-block kernel built that way ran at ~4 GFLOP/s against the direct kernel's ~45 (n=16),
with 5e-3 (normal) to 9e-3 (heavy-tailed) relative error from quantizing activations. Doing better needs
explicit vectors (an @intrinsic emitting llvm.x86.avx512.vpdpbusd with a generic fallback); even then every
(token, row, block) costs a convert, a multiply and an FMA on top of the dot product, so on this core the gain
over float FMA is in bytes moved, not arithmetic.
"""
from __future__ import annotations

import functools
import os

# Numba's OpenMP threads spin for milliseconds after each parallel kernel, and OpenBLAS's threads spin after each
# BLAS call. On two cores the spinners steal the cores the other pool needs: measured here, a 16-token Q8_0
# matmul after BLAS calls ran at 3.6 GFLOP/s with spinning threads and 23 GFLOP/s with OMP_WAIT_POLICY=PASSIVE.
# Set before Numba starts its thread pool (at the first parallel launch); a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import numba
from numba import prange, types
from numba.extending import intrinsic
from llvmlite import ir

from .blocks import BF16, F16, F32, Q4_0, Q8_0, activations, block_format, row_indices, weight_bytes

# ---------------------------------------------------------------------------------------------------------------
# Compilation: explicit signatures, compiled once at import; cached on disk where a cache folder is writable.

_cache_ok = True


def _jit(signature, **options):
    """numba.njit with `cache=True`, quietly without the disk cache when no cache folder is writable."""

    def wrap(func):
        global _cache_ok
        if _cache_ok:
            try:
                return numba.njit(signature, cache=True, **options)(func)
            except RuntimeError:  # "cannot cache function ...: no locator available": read-only install, no home
                _cache_ok = False
        return numba.njit(signature, **options)(func)

    return wrap


u8_row = types.Array(types.uint8, 1, "C", readonly=True)  # one stored weight row
u8_rows = types.Array(types.uint8, 2, "C", readonly=True)  # a stored weight: memory-mapped, read-only
f32_row = types.float32[::1]
f32_rows = types.float32[:, ::1]
f32_rows_ro = types.Array(types.float32, 2, "C", readonly=True)
i64_vec = types.Array(types.int64, 1, "C", readonly=True)

# ---------------------------------------------------------------------------------------------------------------
# Bits -> float32. Numba has no float16 arithmetic, so halves are decoded with integer ops and one bitcast.

if numba.config.DISABLE_JIT:

    def _f32_from_bits(u):
        return np.uint32(u & 0xFFFFFFFF).view(np.float32)

else:

    @intrinsic
    def _f32_from_bits(typingctx, u):
        """The float32 whose bit pattern is the low 32 bits of the integer u (an LLVM bitcast: free)."""
        if not isinstance(u, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            bits = args[0]
            if u.bitwidth > 32:  # Numba widens uint32 arithmetic to 64 bits
                bits = builder.trunc(bits, ir.IntType(32))
            return builder.bitcast(bits, ir.FloatType())

        return types.float32(u), codegen


@_jit(types.float32(types.uint8, types.uint8))
def _f16(lo, hi):
    """IEEE half (little-endian bytes lo, hi) -> float32, exactly, including subnormals, inf and nan."""
    h = np.uint32(lo) | (np.uint32(hi) << np.uint32(8))
    magnitude = h & np.uint32(0x7FFF)
    if magnitude < np.uint32(0x0400):  # zero or subnormal: m * 2^-24
        v = np.float32(magnitude) * np.float32(5.9604644775390625e-08)
    elif magnitude < np.uint32(0x7C00):  # normal: rebias the exponent by 127 - 15 = 112
        v = _f32_from_bits((magnitude << np.uint32(13)) + np.uint32(112 << 23))
    else:  # inf / nan, payload kept
        v = _f32_from_bits((magnitude << np.uint32(13)) | np.uint32(0x7F800000))
    return -v if h & np.uint32(0x8000) else v


# ---------------------------------------------------------------------------------------------------------------
# The per-type part: decode one stored row into float32.

_decoder_sig = types.void(u8_row, f32_row)


@_jit(_decoder_sig)
def _decode_f32(src, dst):
    """4 bytes per value, little-endian float32."""
    for i in range(dst.size):
        dst[i] = _f32_from_bits(
            np.uint32(src[4 * i])
            | (np.uint32(src[4 * i + 1]) << np.uint32(8))
            | (np.uint32(src[4 * i + 2]) << np.uint32(16))
            | (np.uint32(src[4 * i + 3]) << np.uint32(24))
        )


@_jit(_decoder_sig)
def _decode_f16(src, dst):
    """2 bytes per value, IEEE half."""
    for i in range(dst.size):
        dst[i] = _f16(src[2 * i], src[2 * i + 1])


@_jit(_decoder_sig)
def _decode_bf16(src, dst):
    """2 bytes per value: the upper half of a float32."""
    for i in range(dst.size):
        dst[i] = _f32_from_bits((np.uint32(src[2 * i]) << np.uint32(16)) | (np.uint32(src[2 * i + 1]) << np.uint32(24)))


# In the block decoders the block length comes from the array sizes, not the constant 32: with a constant, LLVM
# unrolls the inner loop fully and then leaves it scalar (33 vcvtsi2ss + 33 vmulss per block); with a length it
# cannot see, the loop vectorizer turns it into a few 512-bit converts and multiplies.


@_jit(_decoder_sig)
def _decode_q8_0(src, dst):
    """34-byte blocks: f16 d, 32 int8 q; x[i] = d * q[i]."""
    n_blocks = src.size // 34
    block = dst.size // n_blocks if n_blocks else 32  # 32
    q = src.view(np.int8)
    for b in range(n_blocks):
        d = _f16(src[34 * b], src[34 * b + 1])
        qb = q[34 * b + 2 : 34 * b + 2 + block]
        xb = dst[block * b : block * b + block]
        for i in range(block):
            xb[i] = d * np.float32(qb[i])


@_jit(_decoder_sig)
def _decode_q4_0(src, dst):
    """18-byte blocks: f16 d, 16 bytes; byte j = q[j] | q[j+16] << 4; x[i] = (q[i] - 8) * d."""
    n_blocks = src.size // 18
    half = dst.size // n_blocks // 2 if n_blocks else 16  # 16
    for b in range(n_blocks):
        d = _f16(src[18 * b], src[18 * b + 1])
        qb = src[18 * b + 2 : 18 * b + 2 + half]
        lo = dst[2 * half * b : 2 * half * b + half]
        hi = dst[2 * half * b + half : 2 * half * (b + 1)]
        for j in range(half):
            byte = qb[j]  # q - 8 in float32 is exact, so the product is gguf's to the bit
            lo[j] = d * (np.float32(np.int32(byte & np.uint8(15))) - np.float32(8.0))
            hi[j] = d * (np.float32(np.int32(byte >> np.uint8(4))) - np.float32(8.0))


@_jit(types.void(types.int64, u8_row, f32_row))
def _decode_row(qtype, src, dst):
    """The one place a type id picks its decoder. Kernels call it with qtype a compile-time constant, so after
    inlining the branch folds away and each kernel holds only its own type's decoder."""
    if qtype == Q8_0:
        _decode_q8_0(src, dst)
    elif qtype == Q4_0:
        _decode_q4_0(src, dst)
    elif qtype == BF16:
        _decode_bf16(src, dst)
    elif qtype == F16:
        _decode_f16(src, dst)
    else:
        _decode_f32(src, dst)


@_jit(types.void(f32_rows_ro, f32_rows, types.int64, types.int64, f32_rows), fastmath={"reassoc", "contract"})
def _dot_rows(x, wbuf, nr, r, y):
    """y[t, r + j] = x[t] . wbuf[j] for every token t and the nr <= 4 decoded rows in wbuf.

    Four rows times four tokens at a time: sixteen running sums, so each value loaded feeds two FMAs (one load
    per FMA would leave the FMA units half idle); LLVM vectorizes the loop over i, the sums become vectors."""
    n, k = x.shape
    t = 0
    if nr == 4:
        w0, w1, w2, w3 = wbuf[0], wbuf[1], wbuf[2], wbuf[3]
        while t + 4 <= n:
            x0, x1, x2, x3 = x[t], x[t + 1], x[t + 2], x[t + 3]
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
            for i in range(k):
                u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
                v = x0[i]
                a00 += v * u0
                a01 += v * u1
                a02 += v * u2
                a03 += v * u3
                v = x1[i]
                a10 += v * u0
                a11 += v * u1
                a12 += v * u2
                a13 += v * u3
                v = x2[i]
                a20 += v * u0
                a21 += v * u1
                a22 += v * u2
                a23 += v * u3
                v = x3[i]
                a30 += v * u0
                a31 += v * u1
                a32 += v * u2
                a33 += v * u3
            y[t, r], y[t, r + 1], y[t, r + 2], y[t, r + 3] = a00, a01, a02, a03
            y[t + 1, r], y[t + 1, r + 1], y[t + 1, r + 2], y[t + 1, r + 3] = a10, a11, a12, a13
            y[t + 2, r], y[t + 2, r + 1], y[t + 2, r + 2], y[t + 2, r + 3] = a20, a21, a22, a23
            y[t + 3, r], y[t + 3, r + 1], y[t + 3, r + 2], y[t + 3, r + 3] = a30, a31, a32, a33
            t += 4
        while t < n:  # the last tokens, one at a time against the four rows
            xt = x[t]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(k):
                v = xt[i]
                a0 += v * w0[i]
                a1 += v * w1[i]
                a2 += v * w2[i]
                a3 += v * w3[i]
            y[t, r], y[t, r + 1], y[t, r + 2], y[t, r + 3] = a0, a1, a2, a3
            t += 1
    for j in range(nr if t < n else 0):  # fewer than four rows left: one row at a time
        wj = wbuf[j]
        for tt in range(t, n):
            xt = x[tt]
            a = np.float32(0.0)
            for i in range(k):
                a += xt[i] * wj[i]
            y[tt, r + j] = a


# ---------------------------------------------------------------------------------------------------------------
# The generic part, built once per type. The factory closes over the type id (an int) rather than over a decoder
# function: Numba pickles closure variables into the cache key, and a dispatcher pickles with a per-process uuid,
# which made every import a cache miss (13 s of compiling); an int pickles the same in every process.

ROWS_PER_TASK = 16  # rows of W one thread decodes in a row before taking the next chunk (direct kernel)


def _build_float_kernels(qtype):
    @_jit(types.void(u8_rows, i64_vec, f32_rows), parallel=True)
    def decode_rows(w, ids, out):
        """out[i] = row ids[i] of W, dequantized."""
        for i in prange(ids.size):
            _decode_row(qtype, w[ids[i]], out[i])

    @_jit(types.void(u8_rows, types.int64, f32_rows))
    def decode_tile(w, r0, out):
        """out[i] = row r0 + i of W, dequantized (serial: BLAS owns the threads right after)."""
        for i in range(out.shape[0]):
            _decode_row(qtype, w[r0 + i], out[i])

    @_jit(types.void(f32_rows_ro, u8_rows, f32_rows), parallel=True)
    def matmul_direct(x, w, y):
        """y[t, r] = sum_i x[t, i] * W[r, i] without BLAS: each thread decodes four rows of W at a time into a
        small buffer that stays in L1 and multiplies every token by them (_dot_rows)."""
        n, k = x.shape
        rows = w.shape[0]
        for task in prange((rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
            buf = np.empty((4, k), np.float32)
            end = min(rows, (task + 1) * ROWS_PER_TASK)
            for r in range(task * ROWS_PER_TASK, end, 4):
                nr = min(4, end - r)
                for j in range(nr):
                    _decode_row(qtype, w[r + j], buf[j])
                _dot_rows(x, buf, nr, r, y)

    return decode_rows, decode_tile, matmul_direct


@functools.cache
def _kernels(qtype: int):
    """A type's kernels, compiled (or loaded from the cache) the first time the type is used: a process that
    only meets Q4_0 and F32 weights never pays for the others."""
    return _build_float_kernels(qtype)

# ---------------------------------------------------------------------------------------------------------------
# The public functions: same signatures as numpy_backend.

TILE_VALUES = 1 << 20  # a dequantized tile of W holds at most this many float32 values (4 MiB)
# Up to this many tokens the direct kernel (one Numba thread pool, no BLAS) is used, above it tile + BLAS.
# bench/kernels.py, one layer's seven matmuls, GFLOP/s on this 2-core machine while shared (load ~6):
#   n=16:   direct 40-55 for every type; tile + BLAS 0.6-4 (OpenBLAS's per-call thread hand-off dominates a small
#           GEMM, and on busy cores each hand-off waits for a time slice)
#   n=512:  direct 27-35, tile + BLAS 22-29 (loaded); BLAS alone reached 186 on a quiet machine, so above ~64
#           tokens BLAS's blocked GEMM is the better bet and the loaded figures are the exception
#   n=4096: tile + BLAS 66-70, direct 20-23
# n=1 (~4-17 for both) is bound by decoding W and by launching threads, not by arithmetic.
DIRECT_MAX_N = 64


def dequantize(w, qtype) -> np.ndarray:
    """The whole weight as float32 (rows, k). For small tensors (norm vectors) and tests."""
    w, rows, k = weight_bytes(w, qtype)
    out = np.empty((rows, k), np.float32)
    _kernels(int(qtype))[1](w, 0, out)
    return out


def dequantize_rows(w, qtype, row_ids) -> np.ndarray:
    """Only the rows `row_ids` of the weight, as float32 (len(row_ids), k): the embedding lookup."""
    w, rows, k = weight_bytes(w, qtype)
    ids = row_indices(row_ids, rows)
    out = np.empty((ids.size, k), np.float32)
    _kernels(int(qtype))[0](w, ids, out)
    return out


def matmul_tiled(x, w, qtype) -> np.ndarray:
    """Design "tile": dequantize a tile of W rows into a reusable float32 scratch, BLAS multiplies x by it."""
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, block_format(qtype)[0])
    if int(qtype) == F32:
        return x @ w.view(np.float32).T
    decode_tile = _kernels(int(qtype))[1]
    y = np.empty((x.shape[0], rows), np.float32)
    tile_rows = max(1, min(rows, TILE_VALUES // k))
    scratch = np.empty((tile_rows, k), np.float32)
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        tile = scratch[: r1 - r0]
        decode_tile(w, r0, tile)
        np.matmul(x, tile.T, out=y[:, r0:r1])
    return y


def matmul_direct(x, w, qtype) -> np.ndarray:
    """Design "direct": one parallel kernel, row by row of W, no BLAS."""
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, block_format(qtype)[0])
    y = np.empty((x.shape[0], rows), np.float32)
    _kernels(int(qtype))[2](x, w, y)
    return y


def matmul(x, w, qtype) -> np.ndarray:
    """y = x @ W.T for float32 activations x (n, k) and a stored weight W (rows, row_bytes): float32 (n, rows)."""
    n = np.shape(x)[0] if np.ndim(x) == 2 else 0
    if n <= DIRECT_MAX_N:
        return matmul_direct(x, w, qtype)
    return matmul_tiled(x, w, qtype)
