"""The integer design's hot tile, in two forms with the same arithmetic:

    y[yt + a, yc:yc + NR] = sum over blocks b of (dw_b * dx_ab) * (sum_i u_bi qx_ai + cx_ab),  a < m <= INT_MR

u the panel's unsigned block integers (q + offset, int_panels), dw_b their float16 scales, qx int16 activation
blocks with scales dx and corrections cx = -offset * sum(qx) (int_matmul.quantize_activations). The integer sums
are exact in int32; each block's sum is scaled and added in float32.

    vector IR (VNNI)   where the target has AVX-512 VNNI: 16 rows an int32 vector, vpdpwssd per pair of values
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
from .int_panels import NR, QB
from .jit import FAST, inner
from .scalar import f16_to_f32

INT_MR = 6  # tokens per tile: 12 int32 block sums + 12 float sums + 2 weight vectors fit in 32 zmm registers
VNNI = (target_has("avx512vnni") and target_has("avx512bw") and target_has("f16c")
        and not numba.config.DISABLE_JIT)


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


def _vnni_codegen(context, builder, signature, args, nibbles=False):
    """The tile in vector IR: 16 rows an int32 vector, vpdpwssd on each pair of values; byte or nibble panels."""
    m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc = args[:11]
    qx_a, dx_a, cx_a = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (1, 2, 3))
    pa = context.make_array(signature.args[5])(context, builder, packed)
    sa = context.make_array(signature.args[6])(context, builder, scales)
    ya = context.make_array(signature.args[8])(context, builder, y)
    i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
    i8p = i8.as_pointer()
    vi, vf = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
    v32_i8, v32_i16 = ir.VectorType(i8, 32), ir.VectorType(ir.IntType(16), 32)
    low_nibble, four = ir.Constant(v32_i16, [15] * 32), ir.Constant(v32_i16, [4] * 32)
    dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [vi, vi, vi]), "llvm.x86.avx512.vpdpwssd.512")
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")
    splat_mask = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

    def splat(value, vec):
        undef = ir.Constant(vec, ir.Undefined)
        return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)), undef, splat_mask)

    def row(array, index, element):  # pointer to the start of row `index`
        stride = builder.extract_value(array.strides, 0)
        at = builder.gep(builder.bitcast(array.data, i8p), [builder.mul(index, stride)])
        return builder.bitcast(at, element.as_pointer())

    def c64(v):
        return ir.Constant(i64, v)

    def load(base, offset, vector):  # the vector at byte `offset` from the i8 pointer base
        return builder.load(builder.bitcast(builder.gep(base, [c64(offset)]), vector.as_pointer()), align=1)

    nv = NR // 16  # int32 vectors across a panel's rows
    done = builder.append_basic_block("int.done")
    switch = builder.switch(m, done)
    for mr in range(1, INT_MR + 1):
        block = builder.append_basic_block(f"int.m{mr}")
        switch.add_case(ir.Constant(m.type, mr), block)
        builder.position_at_end(block)
        # One pointer to the tile's dx and cx ([block][token]), not one per token: fewer live registers.
        q_rows = [row(qx_a, builder.add(t0, c64(a)), i8) for a in range(mr)]
        group = builder.udiv(t0, c64(INT_MR))  # t0 is a group's first token (see quantize_activations)
        d_group, c_group = row(dx_a, group, f32), row(cx_a, group, i32)
        sums = [[cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * 16)) for _ in range(nv)] for _ in range(mr)]
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            block_bytes = QB * NR // 2 if nibbles else QB * NR  # a byte a value, or half a byte
            panel = builder.gep(builder.bitcast(pa.data, i8p), [builder.mul(b, c64(block_bytes))])
            at_block = builder.mul(b, c64(INT_MR))  # the block's dx and cx: [block][token]
            acc = [[splat(builder.load(builder.gep(c_group, [builder.add(at_block, c64(a))])), vi)] * nv for a in range(mr)]
            for s in range(QB // 2):  # two values of the block a step
                if nibbles:  # 2 bytes of each of 16 rows, rows r + 16 in their high nibbles
                    both = builder.zext(load(panel, 32 * s, v32_i8), v32_i16)
                    wv = [builder.bitcast(builder.and_(both, low_nibble), vi),
                          builder.bitcast(builder.lshr(both, four), vi)]
                else:  # 2 bytes of each of 16 rows, widened to int16 pairs
                    wv = [builder.bitcast(builder.zext(load(panel, 2 * (s * NR + 16 * v), v32_i8), v32_i16), vi)
                          for v in range(nv)]
                for a in range(mr):
                    at = builder.gep(q_rows[a], [builder.add(builder.mul(b, c64(2 * QB)), c64(4 * s))])
                    xv = splat(builder.load(builder.bitcast(at, i32.as_pointer()), align=1), vi)
                    acc[a] = [builder.call(dot, [acc[a][v], wv[v], xv]) for v in range(nv)]
            scales_b = builder.gep(sa.data, [builder.mul(b, c64(NR))])  # the block's NR weight scales, float16 bits
            vh = ir.VectorType(ir.HalfType(), 16)
            dw = [builder.fpext(builder.load(builder.bitcast(builder.gep(scales_b, [c64(16 * v)]), vh.as_pointer()), align=2), vf)
                  for v in range(nv)]
            for a in range(mr):
                d = splat(builder.load(builder.gep(d_group, [builder.add(at_block, c64(a))])), vf)
                for v in range(nv):
                    total = builder.sitofp(acc[a][v], vf)
                    builder.store(builder.call(fma, [total, builder.fmul(dw[v], d), builder.load(sums[a][v])]), sums[a][v])
        for a in range(mr):
            out = builder.gep(row(ya, builder.add(yt, c64(a)), f32), [yc])
            for v in range(nv):
                builder.store(builder.load(sums[a][v]), builder.bitcast(builder.gep(out, [c64(16 * v)]), vf.as_pointer()), align=4)
        builder.branch(done)
    builder.position_at_end(done)
    return context.get_dummy_value()


if VNNI:

    @intrinsic
    def _vnni_tile(typingctx, m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc, nibbles):
        """The tile in vector IR; `nibbles` must be a compile-time constant (the caller's literal)."""
        if not (isinstance(qx, types.Array) and qx.dtype == types.int16 and isinstance(nibbles, types.BooleanLiteral)):
            return None
        codegen = partial(_vnni_codegen, nibbles=nibbles.literal_value)
        return types.void(m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc, nibbles), codegen

    int_tile = _vnni_tile
else:
    int_tile = _loop_tile
