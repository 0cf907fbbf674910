"""The outer-product micro-kernel, which the float matmul and attention share, and the transposition that makes
its panels.

    outer_tile(m, x, t0, packed, k, y, yt, yc)   y[yt + a, yc:yc + NR] = x[t0 + a, :k] @ P, a < m <= MR
    pack_panel(rows, packed)                     P = rows.T stored row after row: NR rows of W side by side

Each step of the tile broadcasts one value of each of m tokens and multiplies it by the panel's two vectors: 2m
FMAs on registers, no horizontal sums, whole-vector stores. LLVM's loop vectorizer does not produce this from
scalar loops, so it is written in LLVM vector IR; LLVM still picks the instructions for the target.
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import target_has
from .jit import inner

WIDE = target_has("avx512f")
LANES = 16 if WIDE else 8  # float32 lanes of one vector register
NR = 2 * LANES  # rows of W per packed panel: two vectors
MR = 12 if WIDE else 6  # tokens per micro-tile: 2 * MR accumulators + 3 fit in 32 (16) vector registers


if numba.config.DISABLE_JIT:

    def outer_tile(m, x, t0, packed, k, y, yt, yc):
        y[yt:yt + m, yc:yc + NR] = x[t0:t0 + m, :k] @ packed[:k * NR].reshape(k, NR)

else:

    def _outer_tile_codegen(context, builder, signature, args):
        x_type, _, packed_type, _, y_type, _, _ = signature.args[1:]
        m, x, t0, packed, k, y, yt, yc = args
        xa = context.make_array(x_type)(context, builder, x)
        pa = context.make_array(packed_type)(context, builder, packed)
        ya = context.make_array(y_type)(context, builder, y)
        f32, i64, i8p = ir.FloatType(), ir.IntType(64), ir.IntType(8).as_pointer()
        vec = ir.VectorType(f32, LANES)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32")
        zero, undef = ir.Constant(vec, [0.0] * LANES), ir.Constant(vec, ir.Undefined)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        x_stride, y_stride = builder.extract_value(xa.strides, 0), builder.extract_value(ya.strides, 0)

        def row(data, stride, index):  # float* to the start of row `index`
            return builder.bitcast(builder.gep(builder.bitcast(data, i8p), [builder.mul(index, stride)]), f32.as_pointer())

        done = builder.append_basic_block("outer.done")
        switch = builder.switch(m, done)
        for mr in range(1, MR + 1):  # one unrolled body per micro-tile height, picked by m
            block = builder.append_basic_block(f"outer.m{mr}")
            switch.add_case(ir.Constant(m.type, mr), block)
            builder.position_at_end(block)
            x_rows = [row(xa.data, x_stride, builder.add(t0, ir.Constant(i64, a))) for a in range(mr)]
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(mr)]  # registers after mem2reg
            with cgutils.for_range(builder, k) as loop:
                i = loop.index
                at = builder.gep(pa.data, [builder.mul(i, ir.Constant(i64, NR))])
                p0 = builder.load(builder.bitcast(at, vec.as_pointer()), align=4)
                p1 = builder.load(builder.bitcast(builder.gep(at, [ir.Constant(i64, LANES)]), vec.as_pointer()), align=4)
                for a in range(mr):
                    v = builder.load(builder.gep(x_rows[a], [i]))
                    v = builder.shuffle_vector(builder.insert_element(undef, v, ir.Constant(ir.IntType(32), 0)), undef, splat_mask)
                    builder.store(builder.call(fma, [v, p0, builder.load(sums[a][0])]), sums[a][0])
                    builder.store(builder.call(fma, [v, p1, builder.load(sums[a][1])]), sums[a][1])
            for a in range(mr):
                out = builder.gep(row(ya.data, y_stride, builder.add(yt, ir.Constant(i64, a))), [yc])
                builder.store(builder.load(sums[a][0]), builder.bitcast(out, vec.as_pointer()), align=4)
                out = builder.gep(out, [ir.Constant(i64, LANES)])
                builder.store(builder.load(sums[a][1]), builder.bitcast(out, vec.as_pointer()), align=4)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    @intrinsic
    def outer_tile(typingctx, m, x, t0, packed, k, y, yt, yc):
        """y[yt + a, yc:yc + NR] = x[t0 + a, :k] @ packed.reshape(k, NR) for a < m <= MR; no bounds checks."""
        arrays_ok = all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (x, packed, y))
        if not (arrays_ok and x.ndim == 2 and y.ndim == 2 and packed.ndim == 1 and packed.layout == "C"):
            return None
        return types.void(m, x, t0, packed, k, y, yt, yc), _outer_tile_codegen


if numba.config.DISABLE_JIT:

    def _transpose_blocks(rows, packed, n_blocks):
        for i in range(n_blocks * LANES):
            packed[i * NR:(i + 1) * NR] = rows[:, i]

else:

    def _transpose_codegen(context, builder, signature, args):
        rows_type, packed_type, _ = signature.args
        rows = context.make_array(rows_type)(context, builder, args[0])
        packed = context.make_array(packed_type)(context, builder, args[1])
        f32, i32, i64, i8p = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        vec = ir.VectorType(f32, LANES)
        stride = builder.extract_value(rows.strides, 0)
        # zip(a, b) = a0 b0 a1 b1 ...: its low and high halves. Applied log2(LANES) times to vectors i and
        # i + LANES / 2, the "perfect shuffle" turns LANES rows into LANES columns.
        zip_low = ir.Constant(ir.VectorType(i32, LANES), [j // 2 + (j % 2) * LANES for j in range(LANES)])
        zip_high = ir.Constant(ir.VectorType(i32, LANES), [LANES // 2 + j // 2 + (j % 2) * LANES for j in range(LANES)])
        with cgutils.for_range(builder, args[2]) as loop:
            i0 = builder.mul(loop.index, ir.Constant(i64, LANES))
            for g in range(NR // LANES):
                v = []
                for a in range(LANES):
                    row = builder.gep(builder.bitcast(rows.data, i8p), [builder.mul(ir.Constant(i64, g * LANES + a), stride)])
                    at = builder.gep(builder.bitcast(row, f32.as_pointer()), [i0])
                    v.append(builder.load(builder.bitcast(at, vec.as_pointer()), align=4))
                for _ in range(LANES.bit_length() - 1):
                    half = LANES // 2
                    v = [builder.shuffle_vector(v[i // 2], v[i // 2 + half], zip_low if i % 2 == 0 else zip_high) for i in range(LANES)]
                for c in range(LANES):
                    column = builder.add(i0, ir.Constant(i64, c))
                    at = builder.gep(packed.data, [builder.add(builder.mul(column, ir.Constant(i64, NR)), ir.Constant(i64, g * LANES))])
                    builder.store(v[c], builder.bitcast(at, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    @intrinsic
    def _transpose_blocks(typingctx, rows, packed, n_blocks):
        """packed[i * NR + j] = rows[j, i] for i < n_blocks * LANES, LANES x LANES blocks at a time."""
        return types.void(rows, packed, n_blocks), _transpose_codegen


@inner()
def pack_panel(rows, packed):
    """packed[i * NR + j] = rows[j, i]: NR decoded rows of W side by side. In LANES x LANES blocks transposed in
    registers (zip shuffles), then the last columns one by one."""
    k = rows.shape[1]
    n_blocks = k // LANES
    _transpose_blocks(rows, packed, n_blocks)
    for i in range(n_blocks * LANES, k):
        column = packed[i * NR:(i + 1) * NR]
        for j in range(NR):
            column[j] = rows[j, i]

