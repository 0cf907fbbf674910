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

from .blocks import BF16, F16, Q4_0, Q8_0, row_indices, weight_bytes
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
