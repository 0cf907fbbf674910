"""Stored rows -> float32: one decoder per block type, bit-exact with gguf.quants, and the one function that
picks a decoder by type id. The matmul designs and the embedding lookup decode through decode_row.

    dequantize(w, qtype)              all of W as float32 (rows, k)
    dequantize_rows(w, qtype, ids)    rows ids of W as float32
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .blocks import BF16, F16, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, row_indices, weight_bytes
from .jit import compiled, f32_rows, i64_vec, inner, jit, u8_rows
from .scalar import HARDWARE_HALF, f16_to_f32, f32_from_bits

@inner()
def _decode_f32(src, dst):
    """4 bytes per value, little-endian float32."""
    values = src.view(np.float32)
    for i in range(dst.size):
        dst[i] = values[i]


@inner()
def _decode_f16(src, dst):
    """2 bytes per value, IEEE half."""
    halves = src.view(np.uint16)
    for i in range(dst.size):
        dst[i] = f16_to_f32(halves[i])


@inner()
def _decode_bf16(src, dst):
    """2 bytes per value: the upper half of a float32."""
    halves = src.view(np.uint16)
    for i in range(dst.size):
        dst[i] = f32_from_bits(np.uint32(halves[i]) << np.uint32(16))


# Block length from the array sizes and each block a slice indexed from 0: so LLVM vectorizes the loop instead of
# unrolling it into scalar code, and drops wraparound checks (kernels/DESIGN.md, "Decoding").


@inner()
def _decode_q8_0(src, dst):
    """34-byte blocks: f16 d, 32 int8 q; x[i] = d * q[i]."""
    n_blocks = src.size // 34
    block = dst.size // n_blocks if n_blocks else 32  # 32
    scales = src.view(np.uint16)  # d of block b is half b * 17
    q = src.view(np.int8)
    for b in range(n_blocks):
        d = f16_to_f32(scales[17 * b])
        qb, xb = q[34 * b + 2:34 * b + 2 + block], dst[block * b:block * (b + 1)]
        for i in range(block):
            xb[i] = d * np.float32(qb[i])


@inner()
def _decode_q4_0(src, dst):
    """18-byte blocks: f16 d, 16 bytes; byte j = q[j] | q[j+16] << 4; x[i] = (q[i] - 8) * d."""
    n_blocks = src.size // 18
    half = dst.size // n_blocks // 2 if n_blocks else 16  # 16
    scales = src.view(np.uint16)  # d of block b is half b * 9
    for b in range(n_blocks):
        d = f16_to_f32(scales[9 * b])
        qb = src[18 * b + 2:18 * b + 2 + half]
        lo, hi = dst[2 * half * b:2 * half * b + half], dst[2 * half * b + half:2 * half * (b + 1)]
        for j in range(half):
            byte = qb[j]  # q - 8 in float32 is exact, so the product is gguf's to the bit
            lo[j] = d * (np.float32(np.uint8(byte & np.uint8(15))) - np.float32(8.0))
            hi[j] = d * (np.float32(np.uint8(byte >> np.uint8(4))) - np.float32(8.0))


# The types llama.cpp's quantizer adds, as plain loops (kernels/DESIGN.md, "Decoding"). No fastmath here: d * q + m
# must stay two roundings, as gguf.quants computes it, not one fused multiply-add.


@inner()
def _decode_q4_1(src, dst):
    """20-byte blocks: f16 d, f16 m, 16 bytes as Q4_0's; x[i] = d * q[i] + m."""
    n_blocks = src.size // 20
    half = dst.size // n_blocks // 2 if n_blocks else 16  # 16
    words = src.view(np.uint16)  # d of block b is half 10 b, m half 10 b + 1
    for b in range(n_blocks):
        d, m = f16_to_f32(words[10 * b]), f16_to_f32(words[10 * b + 1])
        qb = src[20 * b + 4:20 * b + 4 + half]
        lo, hi = dst[2 * half * b:2 * half * b + half], dst[2 * half * b + half:2 * half * (b + 1)]
        for j in range(half):
            byte = qb[j]
            lo[j] = d * np.float32(np.uint8(byte & np.uint8(15))) + m
            hi[j] = d * np.float32(np.uint8(byte >> np.uint8(4))) + m


@inner()
def _fifth_bits(src, at):
    """The 4-byte little-endian qh at byte `at` of src: bit j is the 5th bit of q[j]."""
    return (np.int64(src[at]) | np.int64(src[at + 1]) << 8 | np.int64(src[at + 2]) << 16
            | np.int64(src[at + 3]) << 24)


@inner()
def _decode_q5(src, dst, block_bytes, with_min):
    """Q5_0 (22-byte blocks: f16 d, qh, 16 bytes; x = (q - 16) * d) and Q5_1 (24: f16 d, f16 m, qh, 16 bytes;
    x = d * q + m). q = nibble | 5th bit << 4, nibbles as Q4_0's."""
    n_blocks = src.size // block_bytes
    half = dst.size // n_blocks // 2 if n_blocks else 16  # 16
    words = src.view(np.uint16)
    step = block_bytes // 2
    qh_at = 4 if with_min else 2
    for b in range(n_blocks):
        d = f16_to_f32(words[step * b])
        m = f16_to_f32(words[step * b + 1]) if with_min else np.float32(0.0)
        qh = _fifth_bits(src, block_bytes * b + qh_at)
        qb = src[block_bytes * b + qh_at + 4:block_bytes * b + qh_at + 4 + half]
        lo, hi = dst[2 * half * b:2 * half * b + half], dst[2 * half * b + half:2 * half * (b + 1)]
        for j in range(half):
            byte = np.int64(qb[j])
            q_lo = (byte & 15) | ((qh >> j) & 1) << 4
            q_hi = (byte >> 4) | ((qh >> (j + 16)) & 1) << 4
            if with_min:
                lo[j] = d * np.float32(q_lo) + m
                hi[j] = d * np.float32(q_hi) + m
            else:
                lo[j] = np.float32(q_lo - 16) * d
                hi[j] = np.float32(q_hi - 16) * d


@inner()
def _decode_q5_0(src, dst):
    _decode_q5(src, dst, 22, False)


@inner()
def _decode_q5_1(src, dst):
    _decode_q5(src, dst, 24, True)


@inner()
def _k_scale_min(sc, s):
    """Sub-block s's 6-bit scale and min from Q4_K / Q5_K's 12 scale bytes (ggml's get_scale_min_k4)."""
    if s < 4:
        return np.int64(sc[s]) & 63, np.int64(sc[s + 4]) & 63
    return ((np.int64(sc[s + 4]) & 15) | (np.int64(sc[s - 4]) >> 6) << 4,
            (np.int64(sc[s + 4]) >> 4) | (np.int64(sc[s]) >> 6) << 4)


@inner()
def _decode_k_quant(src, dst, block_bytes, with_qh):
    """Q4_K (144-byte blocks) and Q5_K (176, with qh): eight sub-blocks of 32; x = (d * sc) * q - (dmin * m).
    Sub-blocks 2 g and 2 g + 1 share bytes 32 g .. 32 g + 31 (low and high nibbles): one pass over them."""
    n_blocks = src.size // block_bytes
    words = src.view(np.uint16)
    for b in range(n_blocks):
        at = block_bytes * b
        d, dmin = f16_to_f32(words[at // 2]), f16_to_f32(words[at // 2 + 1])
        sc = src[at + 4:at + 16]
        qh = src[at + 16:at + 48]
        for g in range(4):
            scale, low = _k_scale_min(sc, 2 * g)
            ds0, dm0 = d * np.float32(scale), dmin * np.float32(low)
            scale, low = _k_scale_min(sc, 2 * g + 1)
            ds1, dm1 = d * np.float32(scale), dmin * np.float32(low)
            qb = src[at + block_bytes - 128 + 32 * g:at + block_bytes - 128 + 32 * g + 32]
            x0, x1 = dst[256 * b + 64 * g:256 * b + 64 * g + 32], dst[256 * b + 64 * g + 32:256 * b + 64 * g + 64]
            for j in range(32):
                byte = qb[j]
                q0, q1 = np.uint8(byte & np.uint8(15)), np.uint8(byte >> np.uint8(4))
                if with_qh:
                    bits = np.uint8(qh[j] >> np.uint8(2 * g))
                    q0 = np.uint8(q0 | np.uint8(np.uint8(bits & np.uint8(1)) << np.uint8(4)))
                    q1 = np.uint8(q1 | np.uint8(np.uint8(bits & np.uint8(2)) << np.uint8(3)))
                x0[j] = ds0 * np.float32(q0) - dm0
                x1[j] = ds1 * np.float32(q1) - dm1


@inner()
def _decode_q4_k(src, dst):
    _decode_k_quant(src, dst, 144, False)


@inner()
def _decode_q5_k(src, dst):
    _decode_k_quant(src, dst, 176, True)


@inner()
def _decode_q6_k(src, dst):
    """210-byte blocks: ql, qh, 16 int8 scales, f16 d; value 128 g + 32 s + l has its low bits in nibble s // 2
    of ql[64 g + 32 (s % 2) + l], its high two at 2 s of qh[32 g + l]; x = (d * sc[v // 16]) * (q - 32).
    Each l reads its three bytes once and makes the four values s = 0..3, as ggml's own loop does."""
    n_blocks = src.size // 210
    words = src.view(np.uint16)
    scales = src.view(np.int8)
    for b in range(n_blocks):
        at = 210 * b
        d = f16_to_f32(words[105 * b + 104])
        for g in range(2):
            for c in range(2):  # values l in [16 c, 16 c + 16) of each s share a scale
                first = at + 64 * g + 16 * c
                ql0, ql1 = src[first:first + 16], src[first + 32:first + 48]
                qh = src[at + 128 + 32 * g + 16 * c:at + 128 + 32 * g + 16 * c + 16]
                sc = at + 192 + 8 * g + c
                ds0, ds1 = d * np.float32(scales[sc]), d * np.float32(scales[sc + 2])
                ds2, ds3 = d * np.float32(scales[sc + 4]), d * np.float32(scales[sc + 6])
                out = 256 * b + 128 * g + 16 * c
                x0, x1, x2, x3 = dst[out:out + 16], dst[out + 32:out + 48], dst[out + 64:out + 80], dst[out + 96:out + 112]
                for j in range(16):
                    a, e, h = ql0[j], ql1[j], qh[j]
                    q0 = np.uint8(np.uint8(a & np.uint8(15)) | np.uint8(np.uint8(h & np.uint8(3)) << np.uint8(4)))
                    q1 = np.uint8(np.uint8(e & np.uint8(15)) | np.uint8(np.uint8(h & np.uint8(12)) << np.uint8(2)))
                    q2 = np.uint8(np.uint8(a >> np.uint8(4)) | np.uint8(h & np.uint8(48)))
                    q3 = np.uint8(np.uint8(e >> np.uint8(4)) | np.uint8(np.uint8(h >> np.uint8(6)) << np.uint8(4)))
                    x0[j] = ds0 * (np.float32(q0) - np.float32(32.0))  # q - 32 is exact in float32
                    x1[j] = ds1 * (np.float32(q1) - np.float32(32.0))
                    x2[j] = ds2 * (np.float32(q2) - np.float32(32.0))
                    x3[j] = ds3 * (np.float32(q3) - np.float32(32.0))


# The same two decoders in LLVM vector IR, where the CPU converts halves itself: a block is one load of its scale
# and bytes, a widening convert, a multiply and vector stores; ~2.4x the loops above, bit-identical.

def _block_decoder(block_bytes: int):
    """codegen for every block of a Q8_0 (34-byte blocks) or Q4_0 (18-byte blocks) row: (src, dst) -> dst float32
    = d * q. Q4_0's q is (nibble - 8): low nibbles first, then high. (The integer design's int16 weights come
    from _panel_codegen, a whole panel at a time.)"""

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.args[1])(context, builder, args[1])
        i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
        n_blocks = builder.udiv(builder.extract_value(src.shape, 0), ir.Constant(i64, block_bytes))
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            at = builder.gep(src.data, [builder.mul(b, ir.Constant(i64, block_bytes))])
            d = builder.load(builder.bitcast(at, i16.as_pointer()), align=1)
            d = builder.fpext(builder.bitcast(d, ir.HalfType()), f32)
            q = builder.gep(at, [ir.Constant(i64, 2)])
            if block_bytes == 34:  # Q8_0: the 32 bytes as they are
                values = builder.load(builder.bitcast(q, ir.VectorType(i8, 32).as_pointer()), align=1)
                parts = [builder.sext(values, ir.VectorType(i16, 32))]
            else:  # Q4_0: 16 bytes, low nibbles - 8, then high nibbles - 8
                v8, v16 = ir.VectorType(i8, 16), ir.VectorType(i16, 16)
                nibbles = builder.load(builder.bitcast(q, v8.as_pointer()), align=1)
                halves = (builder.and_(nibbles, ir.Constant(v8, [15] * 16)), builder.lshr(nibbles, ir.Constant(v8, [4] * 16)))
                parts = [builder.sub(builder.zext(h, v16), ir.Constant(v16, [8] * 16)) for h in halves]
            out = builder.gep(dst.data, [builder.mul(b, ir.Constant(i64, 32))])
            for index, part in enumerate(parts):
                width = part.type.count
                target = builder.gep(out, [ir.Constant(i64, width * index)])
                vf = ir.VectorType(f32, width)  # q is exact in float32, so d * q is gguf's value to the bit
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), d, ir.Constant(i32, 0)),
                                               ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(i32, width), [0] * width))
                part = builder.fmul(builder.sitofp(part, vf), splat)
                builder.store(part, builder.bitcast(target, part.type.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


if numba.config.DISABLE_JIT or not HARDWARE_HALF:
    _decode_q8_0_blocks, _decode_q4_0_blocks = _decode_q8_0, _decode_q4_0
else:

    @intrinsic
    def _decode_q8_0_blocks(typingctx, src, dst):
        """_decode_q8_0 in vector IR (32 values a block; the caller passes whole rows)."""
        return types.void(src, dst), _block_decoder(34)

    @intrinsic
    def _decode_q4_0_blocks(typingctx, src, dst):
        """_decode_q4_0 in vector IR (32 values a block; the caller passes whole rows)."""
        return types.void(src, dst), _block_decoder(18)


@inner()
def decode_row(qtype, src, dst):
    """The one place a type id picks its decoder: once per row of W, so the branch costs nothing measurable.
    (Numba cannot call through a table of functions and still cache; every other dispatch is data.)"""
    if qtype == Q8_0:
        _decode_q8_0_blocks(src, dst)
    elif qtype == Q4_0:
        _decode_q4_0_blocks(src, dst)
    elif qtype == Q4_K:
        _decode_q4_k(src, dst)
    elif qtype == Q6_K:
        _decode_q6_k(src, dst)
    elif qtype == Q5_K:
        _decode_q5_k(src, dst)
    elif qtype == Q5_0:
        _decode_q5_0(src, dst)
    elif qtype == Q5_1:
        _decode_q5_1(src, dst)
    elif qtype == Q4_1:
        _decode_q4_1(src, dst)
    elif qtype == BF16:
        _decode_bf16(src, dst)
    elif qtype == F16:
        _decode_f16(src, dst)
    else:
        _decode_f32(src, dst)


@jit(types.void(types.int64, u8_rows, i64_vec, f32_rows), parallel=True)
def _decode_rows(qtype, w, ids, out):
    """out[i] = row ids[i] of W, dequantized."""
    for i in prange(ids.size):
        decode_row(qtype, w[ids[i]], out[i])


@jit(types.void(types.int64, u8_rows, types.int64, f32_rows))
def _decode_tile(qtype, w, r0, out):
    """out[i] = row r0 + i of W, dequantized (serial)."""
    for i in range(out.shape[0]):
        decode_row(qtype, w[r0 + i], out[i])


def dequantize(w, qtype) -> np.ndarray:
    """The whole weight as float32 (rows, k). For small tensors (norm vectors) and tests."""
    w, rows, k = weight_bytes(w, qtype)
    out = np.empty((rows, k), np.float32)
    compiled(_decode_tile)(int(qtype), w, 0, out)
    return out


def dequantize_rows(w, qtype, row_ids) -> np.ndarray:
    """Only the rows `row_ids` of the weight, as float32 (len(row_ids), k): the embedding lookup."""
    w, rows, k = weight_bytes(w, qtype)
    ids = row_indices(row_ids, rows)
    out = np.empty((ids.size, k), np.float32)
    compiled(_decode_rows)(int(qtype), w, ids, out)
    return out


KERNELS = (_decode_rows, _decode_tile)  # what dequantize(_rows) launch
