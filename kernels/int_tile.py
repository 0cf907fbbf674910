"""The integer design's hot tile, in two forms with the same arithmetic:

    y[yt + a, yc:yc + NR] = sum over blocks b of (dw_b * dx_ab) * (sum_i u_bi qx_ai + cx_ab),  a < m <= INT_MR

u the panel's unsigned block integers (q + offset, int_panels), dw_b their float16 scales, qx int16 activation
blocks with scales dx and corrections cx = -offset * sum(qx) (int_matmul.quantize_activations). The integer sums
are exact in int32; each block's sum is scaled and added in float32.

    vector IR          one generic tile (VECTOR says how it is laid out on this target):
                         AVX-512 VNNI   16 rows an int32 vector, vpdpwssd per pair of values, 6 tokens a tile
                         AVX2           8 rows a vector, vpmaddwd and an add, 3 tokens a tile
    plain loops        everywhere else, and in NUMBA_DISABLE_JIT runs: the same sums, loops LLVM vectorizes
"""
from __future__ import annotations

from functools import partial

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import target_has
from .int_panels import INT_OFFSET, NR, QB
from .jit import FAST, inner
from .scalar import f16_to_f32



@inner(fastmath=FAST)
def _loop_tile(m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc, nibbles):
    """The tile in plain loops (see the module docstring); nibbles: Q4_0's panel, rows r and r + 16 in one byte."""
    group = t0 // INT_MR
    dg, cg = dx[group], cx[group]
    block_bytes = QB * NR // 2 if nibbles else QB * NR
    isum = np.empty(NR, np.int32)
    for a in range(m):
        out = y[yt + a, yc:yc + NR]
        out[:] = np.float32(0.0)
        q = qx[t0 + a]
        for b in range(n_blocks):
            c = cg[b * INT_MR + a]
            isum[:] = c
            panel, qb = packed[b * block_bytes:(b + 1) * block_bytes], q[b * QB:(b + 1) * QB]
            for s in range(QB // 2):
                q0, q1 = np.int32(qb[2 * s]), np.int32(qb[2 * s + 1])
                if nibbles:
                    step = panel[32 * s:32 * (s + 1)]
                    for r in range(NR // 2):
                        u0, u1 = np.int32(step[2 * r]), np.int32(step[2 * r + 1])
                        isum[r] += (u0 & 15) * q0 + (u1 & 15) * q1
                        isum[r + NR // 2] += (u0 >> 4) * q0 + (u1 >> 4) * q1
                else:
                    step = panel[2 * NR * s:2 * NR * (s + 1)]
                    for r in range(NR):
                        isum[r] += np.int32(step[2 * r]) * q0 + np.int32(step[2 * r + 1]) * q1
            d = dg[b * INT_MR + a]
            scale_b = scales[b * NR:(b + 1) * NR]
            for r in range(NR):
                out[r] += np.float32(isum[r]) * (f16_to_f32(scale_b[r]) * d)


def _vector_codegen(context, builder, signature, args, nibbles, vector):
    """The tile in vector IR: `vector.lanes` rows an int32 vector, each pair of values multiplied and added in by
    `vector.dot`; byte or nibble panels."""
    m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc = args[:11]
    qx_a, dx_a, cx_a = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (1, 2, 3))
    pa = context.make_array(signature.args[5])(context, builder, packed)
    sa = context.make_array(signature.args[6])(context, builder, scales)
    ya = context.make_array(signature.args[8])(context, builder, y)
    lanes = vector.lanes
    i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
    i8p = i8.as_pointer()
    vi, vf = ir.VectorType(i32, lanes), ir.VectorType(f32, lanes)
    pair_bytes, pair_i16 = ir.VectorType(i8, 2 * lanes), ir.VectorType(i16, 2 * lanes)
    low_nibble, four = ir.Constant(pair_i16, [15] * 2 * lanes), ir.Constant(pair_i16, [4] * 2 * lanes)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), f"llvm.fma.v{lanes}f32")
    dot = vector.dot(builder, lanes)
    splat_mask = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

    def splat(value, vec):
        undef = ir.Constant(vec, ir.Undefined)
        return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)), undef, splat_mask)

    def row(array, index, element):  # pointer to the start of row `index`
        stride = builder.extract_value(array.strides, 0)
        at = builder.gep(builder.bitcast(array.data, i8p), [builder.mul(index, stride)])
        return builder.bitcast(at, element.as_pointer())

    def c64(v):
        return ir.Constant(i64, v)

    def load(base, offset, vec):  # the vector at byte `offset` from the i8 pointer base
        return builder.load(builder.bitcast(builder.gep(base, [c64(offset)]), vec.as_pointer()), align=1)

    def widened(base, offset):  # 2 bytes of each of `lanes` rows as int16 pairs, one pair an int32 lane
        return builder.zext(load(base, offset, pair_bytes), pair_i16)

    nv = NR // lanes  # int32 vectors across a panel's rows
    tokens = vector.tokens
    done = builder.append_basic_block("int.done")
    switch = builder.switch(m, done)
    for mr in range(1, tokens + 1):
        block = builder.append_basic_block(f"int.m{mr}")
        switch.add_case(ir.Constant(m.type, mr), block)
        builder.position_at_end(block)
        # One pointer to the tile's dx and cx ([block][token]), not one per token: fewer live registers.
        q_rows = [row(qx_a, builder.add(t0, c64(a)), i8) for a in range(mr)]
        group = builder.udiv(t0, c64(tokens))  # t0 is a group's first token (see quantize_activations)
        d_group, c_group = row(dx_a, group, f32), row(cx_a, group, i32)
        sums = [[cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * lanes)) for _ in range(nv)] for _ in range(mr)]
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            block_bytes = QB * NR // 2 if nibbles else QB * NR  # a byte a value, or half a byte
            panel = builder.gep(builder.bitcast(pa.data, i8p), [builder.mul(b, c64(block_bytes))])
            at_block = builder.mul(b, c64(tokens))  # the block's dx and cx: [block][token]
            acc = [[splat(builder.load(builder.gep(c_group, [builder.add(at_block, c64(a))])), vi)] * nv for a in range(mr)]

            def steps(acc, first, count):  # `count` steps of two values from step `first` (an i64 value) on
                for j in range(count):
                    s = builder.add(first, c64(j))
                    if nibbles:  # 2 bytes of each of 16 rows, rows r + 16 in their high nibbles
                        base = builder.gep(panel, [builder.mul(s, c64(32))])
                        both = [widened(base, 2 * lanes * c) for c in range(16 // lanes)]
                        wv = ([builder.bitcast(builder.and_(w, low_nibble), vi) for w in both]
                              + [builder.bitcast(builder.lshr(w, four), vi) for w in both])
                    else:  # 2 bytes of each row, widened to int16 pairs
                        base = builder.gep(panel, [builder.mul(s, c64(2 * NR))])
                        wv = [builder.bitcast(widened(base, 2 * lanes * v), vi) for v in range(nv)]
                    for a in range(mr):
                        at = builder.gep(q_rows[a], [builder.add(builder.mul(b, c64(2 * QB)), builder.mul(s, c64(4)))])
                        xv = splat(builder.load(builder.bitcast(at, i32.as_pointer()), align=1), vi)
                        acc[a] = [dot(acc[a][v], wv[v], xv) for v in range(nv)]
                return acc

            unrolled = vector.steps_unrolled
            if unrolled == QB // 2:  # straight-line code
                acc = steps(acc, c64(0), unrolled)
            else:  # a loop of `unrolled` steps an iteration: its sums stay in registers, nothing is hoisted past it
                slots = [[cgutils.alloca_once_value(builder, value) for value in row_] for row_ in acc]
                with cgutils.for_range_slice(builder, c64(0), c64(QB // 2), c64(unrolled)) as (first, _):
                    now = steps([[builder.load(slot) for slot in row_] for row_ in slots], first, unrolled)
                    for row_, values in zip(slots, now):
                        for slot, value in zip(row_, values):
                            builder.store(value, slot)
                acc = [[builder.load(slot) for slot in row_] for row_ in slots]
            scales_b = builder.gep(sa.data, [builder.mul(b, c64(NR))])  # the block's NR weight scales, float16 bits
            vh = ir.VectorType(ir.HalfType(), lanes)
            dw = [builder.fpext(builder.load(builder.bitcast(builder.gep(scales_b, [c64(lanes * v)]), vh.as_pointer()), align=2), vf)
                  for v in range(nv)]
            for a in range(mr):
                d = splat(builder.load(builder.gep(d_group, [builder.add(at_block, c64(a))])), vf)
                for v in range(nv):
                    total = builder.sitofp(acc[a][v], vf)
                    builder.store(builder.call(fma, [total, builder.fmul(dw[v], d), builder.load(sums[a][v])]), sums[a][v])
        for a in range(mr):
            out = builder.gep(row(ya, builder.add(yt, c64(a)), f32), [yc])
            for v in range(nv):
                builder.store(builder.load(sums[a][v]), builder.bitcast(builder.gep(out, [c64(lanes * v)]), vf.as_pointer()), align=4)
        builder.branch(done)
    builder.position_at_end(done)
    return context.get_dummy_value()


def _vpdpwssd(builder, lanes):
    """acc + the pairs' products, in one AVX-512 VNNI instruction."""
    vi = ir.VectorType(ir.IntType(32), lanes)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [vi, vi, vi]), "llvm.x86.avx512.vpdpwssd.512")
    return lambda acc, w, x: builder.call(fn, [acc, w, x])


def _vpmaddwd(builder, lanes):
    """acc + the pairs' products: AVX2's vpmaddwd, then an add. (From plain IR, LLVM splits each pair in two
    vpmaddwd against zeros, because the weights' bytes are known to be zero-extended.)"""
    vi, v16 = ir.VectorType(ir.IntType(32), lanes), ir.VectorType(ir.IntType(16), 2 * lanes)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [v16, v16]), "llvm.x86.avx2.pmadd.wd")
    fence = ir.FunctionType(vi, [vi])

    def dot(acc, w, x):
        total = builder.add(acc, builder.call(fn, [builder.bitcast(w, v16), builder.bitcast(x, v16)]))
        # An empty asm the sum passes through: LLVM cannot reassociate the adds into a tree across it, which
        # would keep every step's products alive at once and spill them (16 ymm registers).
        return builder.asm(fence, "", "=x,0", [total], False, "keep.order")

    return dot


class TileVector:
    """How the vector tile is laid out on a target: int32 lanes a vector, tokens a tile (what fits the registers),
    how a pair of int16 products joins the sums, how many steps of two values run as straight-line code (QB // 2:
    the whole block), and the block types for which it beats the float designs there."""

    def __init__(self, name: str, lanes: int, tokens: int, dot, steps_unrolled: int, qtypes: frozenset):
        self.name, self.lanes, self.tokens, self.dot = name, lanes, tokens, dot
        self.steps_unrolled, self.qtypes = steps_unrolled, qtypes


def _vector_for_target() -> TileVector | None:
    """The vector tile this target compiles, or None (plain loops): it needs halves converted by the CPU."""
    if numba.config.DISABLE_JIT or not target_has("f16c"):
        return None
    if target_has("avx512vnni") and target_has("avx512bw"):
        # 6 tokens: 12 int32 block sums + 12 float sums + 2 weight vectors fit in 32 zmm registers
        return TileVector("vpdpwssd", 16, 6, _vpdpwssd, QB // 2, frozenset(INT_OFFSET))
    if target_has("avx2"):
        # 3 tokens: 12 int32 sums + 3 splats of x + a weight vector in 16 ymm registers, two steps an iteration
        return TileVector("vpmaddwd", 8, 3, _vpmaddwd, 2, frozenset(INT_OFFSET))
    return None


VECTOR = _vector_for_target()
INT_MR = VECTOR.tokens if VECTOR else 6  # tokens a tile


if VECTOR:

    @intrinsic
    def _vector_tile(typingctx, m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc, nibbles):
        """The tile in vector IR; `nibbles` must be a compile-time constant (the caller's literal)."""
        if not (isinstance(qx, types.Array) and qx.dtype == types.int16 and isinstance(nibbles, types.BooleanLiteral)):
            return None
        codegen = partial(_vector_codegen, nibbles=nibbles.literal_value, vector=VECTOR)
        return types.void(m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc, nibbles), codegen

    int_tile = _vector_tile
else:
    int_tile = _loop_tile
